"""Loading VAR files: accepted layouts, and clear errors for everything else."""

import dataclasses

import pytest
import torch

from teachers.checkpoint import CheckpointError, read_state_dict
from teachers.var import (
    VAR,
    VAR_PRESETS,
    VQVAE,
    VQVAE_PRESETS,
    VARConfig,
    VQVAEConfig,
    load_var,
    load_var_teacher,
    load_vqvae,
)
from teachers.var.loading import depth_remedy
from tests.parity import fixture_path, load_parity_json


@pytest.fixture(scope="module")
def args() -> dict:
    return load_parity_json()["var"]["official_args"]


@pytest.fixture(scope="module")
def var_config(args) -> VARConfig:
    return VARConfig.from_official_args(args)


@pytest.fixture(scope="module")
def var_state() -> dict[str, torch.Tensor]:
    return read_state_dict(fixture_path("var_{tag}.safetensors"))


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(t, state[k]) for k, t in model.state_dict().items())


def test_bare_and_training_checkpoints_load(tmp_path, var_config, var_state):
    bare, wrapped = tmp_path / "var_bare.pth", tmp_path / "ar-ckpt-last.pth"
    torch.save(var_state, bare)
    torch.save({"epoch": 3, "trainer": {"var_wo_ddp": var_state, "var_opt": {}}}, wrapped)
    for path in (bare, wrapped):
        model = load_var(path, var_config)
        assert not model.training and same_weights(model, var_state)


def test_preset_names_are_accepted(tmp_path):
    var_config, vae_config = VAR_PRESETS["debug"], VQVAE_PRESETS["debug"]
    torch.save(VAR(var_config).state_dict(), tmp_path / "var.pth")
    torch.save(VQVAE(vae_config).state_dict(), tmp_path / "vae.pth")
    teacher = load_var_teacher(
        tmp_path / "var.pth", tmp_path / "vae.pth", var_config="debug", vae_config="debug"
    )
    assert teacher.var.config == var_config and teacher.vae.config == vae_config
    assert teacher.geometry.num_tokens == var_config.num_tokens


def test_llamagen_file_is_named(var_config):
    with pytest.raises(CheckpointError, match="LlamaGen") as info:
        load_var(fixture_path("llamagen_gpt_{tag}.safetensors"), var_config)
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)
    with pytest.raises(CheckpointError, match="LlamaGen"):
        load_vqvae(fixture_path("llamagen_vq_{tag}.safetensors"), "debug")


def likely_cause(error: pytest.ExceptionInfo) -> str:
    return str(error.value).split("likely cause: ")[1]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("llamagen_gpt_{tag}.safetensors", "a LlamaGen GPT"),
        ("llamagen_vq_{tag}.safetensors", "a LlamaGen tokenizer"),
    ],
)
def test_llamagen_files_are_named_by_kind(name, kind, var_config):
    """Each VAR loader names the kind of LlamaGen file it was given (the GPT given to the
    VQVAE loader was called a LlamaGen tokenizer, its tokenizer given to the transformer
    loader listed the GPT's keys)."""
    for load in (lambda path: load_var(path, var_config), lambda path: load_vqvae(path, "debug")):
        with pytest.raises(CheckpointError) as error:
            load(fixture_path(name))
        assert likely_cause(error).startswith(f"this looks like {kind} ")


def test_old_checkpoint_without_l2_attention_is_diagnosed(tmp_path, var_config, var_state):
    old = {k: v for k, v in var_state.items() if not k.endswith("scale_mul_1H11")}
    path = tmp_path / "var_old.pth"
    torch.save(old, path)
    with pytest.raises(CheckpointError, match="old checkpoint without L2-normalised attention"):
        load_var(path, var_config)
    # The remedy the message names works.
    model = load_var(path, dataclasses.replace(var_config, attn_l2_norm=False))
    assert same_weights(model, old)


def test_wrong_depth_is_diagnosed(var_config):
    """The remedy names a preset only where one exists (the fixture's depth 2 has none:
    VARConfig.preset('d2') was suggested)."""
    deeper = dataclasses.replace(var_config, depth=var_config.depth + 1)
    with pytest.raises(CheckpointError, match=f"depth {var_config.depth}") as error:
        load_var(fixture_path("var_{tag}.safetensors"), deeper)
    assert "VARConfig.from_official_args({'depth': 2, ...})" in str(error.value)
    assert "preset('d2')" not in str(error.value)
    assert depth_remedy(16) == "use VARConfig.preset('d16')"


def test_vqvae_given_as_var_is_diagnosed(var_config):
    with pytest.raises(CheckpointError, match="VQVAE"):
        load_var(fixture_path("var_vqvae_{tag}.safetensors"), var_config)
    with pytest.raises(CheckpointError, match="VAR transformer"):
        load_vqvae(
            fixture_path("var_{tag}.safetensors"),
            VQVAEConfig.from_official_args(load_parity_json()["var"]["official_args"]),
        )


def test_missing_file(tmp_path, var_config):
    with pytest.raises(FileNotFoundError, match="var_d16.pth"):
        load_var(tmp_path / "var_d16.pth", var_config)
    with pytest.raises(FileNotFoundError):
        load_var_teacher(
            tmp_path / "a.pth", tmp_path / "b.pth", var_config=var_config, vae_config="debug"
        )


def test_unknown_wrapper_and_truncated_safetensors_are_named(tmp_path, var_config, var_state):
    """A state dict under a wrapper VAR never writes is named by its top-level keys (it used to
    be called a VQVAE file); a truncated safetensors file is a CheckpointError naming it."""
    wrapped = tmp_path / "var_model.pth"
    torch.save({"model": var_state, "epoch": 3}, wrapped)
    with pytest.raises(CheckpointError, match=r"no tensors at its top level.*keys: epoch, model"):
        load_var(wrapped, var_config)
    whole = fixture_path("var_{tag}.safetensors").read_bytes()
    truncated = tmp_path / "var_cut.safetensors"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=r"var_cut.safetensors as safetensors"):
        load_var(truncated, var_config)


def test_pickled_code_is_refused(tmp_path, var_config):
    path = tmp_path / "var_pickled.pth"
    torch.save({"model": VAR(var_config)}, path)  # a whole module: needs unpickling code
    with pytest.raises(CheckpointError, match=r"it pickles \S*VAR, which is never unpickled"):
        load_var(path, var_config)


def test_vqvae_usage_statistic_of_other_scale_count_is_replaced(tmp_path, args):
    config = VQVAEConfig.from_official_args(args)
    state = read_state_dict(fixture_path("var_vqvae_{tag}.safetensors"))
    state["quantize.ema_vocab_hit_SV"] = torch.ones(len(config.patch_nums) + 6, config.vocab_size)
    path = tmp_path / "vae.pth"
    torch.save(state, path)
    vae = load_vqvae(path, config)
    assert torch.equal(vae.codebook, state["quantize.embedding.weight"])


def test_failed_load_leaves_nothing_half_loaded(var_config, var_state):
    model = VAR(var_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(var_state)
    bad["head.weight"] = torch.zeros(3, 3)
    from teachers.checkpoint import load_strict

    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_strict(model, bad, source="bad")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
