"""Loading LlamaGen checkpoints: every official wrapper round-trips; bad files fail clearly."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

from teachers.checkpoint import CheckpointError
from teachers.llamagen import (
    GPT,
    GPTConfig,
    VQConfig,
    VQModel,
    load_gpt,
    load_llamagen_teacher,
    load_vq,
)
from tests.parity import fixture_path

TINY_GPT = GPTConfig.preset("debug", image_tokens_per_side=4)
TINY_VQ = VQConfig(codebook_size=256, codebook_embed_dim=8, ch=32, ch_mult=(1, 2), z_channels=32)


def _state_dicts_equal(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict", None])
def test_gpt_round_trips_through_every_official_wrapper(tmp_path, wrapper):
    torch.manual_seed(0)
    gpt = GPT(TINY_GPT)
    state = gpt.state_dict()
    state_with_rope = {**state, "freqs_cis": gpt.freqs_cis.clone()}  # some files carry it: dropped
    path = tmp_path / "c2i_tiny.pt"
    torch.save(state_with_rope if wrapper is None else {wrapper: state_with_rope, "steps": 7}, path)
    loaded = load_gpt(path, TINY_GPT)
    assert _state_dicts_equal(loaded.state_dict(), state)
    assert torch.equal(loaded.freqs_cis, gpt.freqs_cis)
    assert not loaded.training


def test_vq_round_trips_through_model_wrapper_and_safetensors(tmp_path):
    torch.manual_seed(0)
    vq = VQModel(TINY_VQ)
    state = vq.state_dict()
    torch.save({"model": state}, tmp_path / "vq.pt")
    save_file(state, str(tmp_path / "vq.safetensors"))
    for name in ("vq.pt", "vq.safetensors"):
        assert _state_dicts_equal(load_vq(tmp_path / name, TINY_VQ).state_dict(), state)


def test_teacher_loads_from_preset_names(tmp_path):
    config = GPTConfig.preset("debug", 4)
    torch.save({"model": GPT(config).state_dict()}, tmp_path / "gpt.pt")
    torch.save({"model": VQModel(TINY_VQ).state_dict()}, tmp_path / "vq.pt")
    teacher = load_llamagen_teacher(
        tmp_path / "gpt.pt", tmp_path / "vq.pt", gpt_config=config, vq_config=TINY_VQ
    )
    assert teacher.geometry.num_tokens == 16 and teacher.image_size == 8


def test_var_checkpoint_given_to_gpt_loader_is_named():
    with pytest.raises(CheckpointError, match="VAR checkpoint") as error:
        load_gpt(fixture_path("var_{tag}.safetensors"), TINY_GPT)
    assert "missing keys" in str(error.value) and "unexpected keys" in str(error.value)


def test_wrong_size_preset_is_named(tmp_path):
    bigger = GPTConfig.preset("debug", 4, n_layer=3, dim=128)
    torch.save({"model": GPT(bigger).state_dict()}, tmp_path / "gpt.pt")
    with pytest.raises(CheckpointError, match=r"wrong size preset.*n_layer=3, dim=128"):
        load_gpt(tmp_path / "gpt.pt", TINY_GPT)


def test_wrong_grid_size_is_named_from_freqs_cis(tmp_path):
    gpt = GPT(GPTConfig.preset("debug", 6))
    torch.save({"model": {**gpt.state_dict(), "freqs_cis": gpt.freqs_cis}}, tmp_path / "gpt.pt")
    with pytest.raises(CheckpointError, match="wrong grid size"):
        load_gpt(tmp_path / "gpt.pt", TINY_GPT)


def test_official_file_name_contradicting_the_config_is_refused(tmp_path):
    path = tmp_path / "c2i_B_384.pt"
    path.write_bytes(b"never read")
    with pytest.raises(CheckpointError, match="wrong grid size"):
        load_gpt(path, GPTConfig.preset("B", 16))
    with pytest.raises(CheckpointError, match="wrong size preset"):
        load_gpt(path, "L-384")
    assert GPTConfig.for_checkpoint(path) == GPTConfig.preset("B", 24)


def test_vq_file_given_to_gpt_loader_and_gpt_file_to_vq_loader():
    with pytest.raises(CheckpointError, match="VQ tokenizer file"):
        load_gpt(fixture_path("llamagen_vq_{tag}.safetensors"), TINY_GPT)
    with pytest.raises(CheckpointError, match="not a VQ tokenizer"):
        load_vq(fixture_path("llamagen_gpt_{tag}.safetensors"), TINY_VQ)
    with pytest.raises(CheckpointError, match="VAR's multi-scale VQVAE"):
        load_vq(fixture_path("var_vqvae_{tag}.safetensors"), TINY_VQ)


@pytest.mark.parametrize(
    ("load", "name", "named"),
    [
        (lambda p: load_gpt(p, TINY_GPT), "var_{tag}.safetensors", "a VAR checkpoint"),
        (lambda p: load_gpt(p, TINY_GPT), "var_vqvae_{tag}.safetensors", "VAR's multi-scale VQVAE"),
        (lambda p: load_vq(p, TINY_VQ), "var_{tag}.safetensors", "a VAR transformer"),
        (lambda p: load_vq(p, TINY_VQ), "var_vqvae_{tag}.safetensors", "VAR's multi-scale VQVAE"),
    ],
)
def test_var_files_given_to_llamagen_loaders_are_named_as_vars(load, name, named):
    """The likely cause names the VAR file given, not a LlamaGen file to pass elsewhere (VAR's
    VQVAE was 'a VQ tokenizer file: pass it as the vq checkpoint'; VAR's transformer 'an AR
    model checkpoint: pass it as the gpt checkpoint')."""
    with pytest.raises(CheckpointError) as error:
        load(fixture_path(name))
    cause = str(error.value).split("likely cause: ")[1]
    assert cause.startswith(f"this is {named}") and "pass it as" not in cause


def test_vq_level_count_mismatch_is_named(tmp_path):
    save_file(VQModel(TINY_VQ).state_dict(), str(tmp_path / "vq.safetensors"))
    deeper = VQConfig(
        codebook_size=256, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 2), z_channels=32
    )
    with pytest.raises(CheckpointError, match="2 resolution levels, the config 3"):
        load_vq(tmp_path / "vq.safetensors", deeper)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_gpt(tmp_path / "nowhere.pt", TINY_GPT)
    with pytest.raises(FileNotFoundError, match="nowhere_vq.pt"):
        load_llamagen_teacher(
            fixture_path("llamagen_gpt_{tag}.safetensors"),
            tmp_path / "nowhere_vq.pt",
            gpt_config=TINY_GPT,
            vq_config=TINY_VQ,
        )


def test_pickled_code_is_refused(tmp_path):
    """A class the file pickles is named as the cause, not guessed to be a truncated download
    or an HTML page (the file was read fine)."""
    path = tmp_path / "evil.pt"
    torch.save({"model": GPT(TINY_GPT).state_dict(), "args": _NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="it pickles .*_NotAWeight, which is never unpickled"):
        load_gpt(path, TINY_GPT)
    with pytest.raises(CheckpointError) as error:
        load_gpt(path, TINY_GPT)
    assert "truncated download" not in str(error.value) and "HTML" not in str(error.value)


def training_args(**script_specific) -> argparse.Namespace:
    """A command line as LlamaGen's training scripts parse it: plain strings, numbers, flags
    and None (a subset of train_c2i.py's arguments, with the fields init_distributed_mode
    adds)."""
    return argparse.Namespace(
        data_path="/data/imagenet", cloud_save_path="/ckpt", no_local_save=False,
        results_dir="results", image_size=256, downsample_size=16, num_classes=10, epochs=300,
        lr=1e-4, weight_decay=5e-2, beta1=0.9, beta2=0.95, max_grad_norm=1.0,
        global_batch_size=256, global_seed=0, ckpt_every=5000, mixed_precision="bf16", ema=True,
        rank=0, gpu=0, distributed=True, dist_backend="nccl", **script_specific,
    )  # fmt: skip


def optimizer_state(module: torch.nn.Module) -> dict:
    """An AdamW state after one step (its tensors, betas tuple and flags), as saved."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.95))
    for parameter in module.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    return optimizer.state_dict()


def test_llamagens_own_training_checkpoints_load(tmp_path):
    """LlamaGen's autoregressive/train/train_c2i.py saves ``{"model", "optimizer", "steps",
    "args": argparse.Namespace}`` (+ ``"ema"`` with --ema), tokenizer/tokenizer_image/vq_train.py
    adds ``"discriminator"`` and ``"optimizer_disc"``: both load under weights_only=True (the
    Namespace is allow-listed plain data), "model" is the weights read (not "ema"), and the file
    is refused once it pickles anything else."""
    torch.manual_seed(0)
    gpt, ema = GPT(TINY_GPT), GPT(TINY_GPT)
    gpt_state = {k: v.clone() for k, v in gpt.state_dict().items()}
    gpt_path = tmp_path / "0050000.pt"
    torch.save(
        {"model": gpt_state, "optimizer": optimizer_state(gpt), "steps": 50000,
         "args": training_args(gpt_model="GPT-B", gpt_type="c2i", vocab_size=256, gpt_ckpt=None,
                               cls_token_num=1, dropout_p=0.1, no_compile=False),
         "ema": ema.state_dict()},
        gpt_path,
    )  # fmt: skip
    assert _state_dicts_equal(load_gpt(gpt_path, TINY_GPT).state_dict(), gpt_state)
    vq, discriminator = VQModel(TINY_VQ), torch.nn.Conv2d(3, 8, 4)
    vq_state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq_path = tmp_path / "vq_0010000.pt"
    torch.save(
        {"model": vq_state, "optimizer": optimizer_state(vq),
         "discriminator": discriminator.state_dict(),
         "optimizer_disc": optimizer_state(discriminator), "steps": 10000,
         "args": training_args(vq_model="VQ-16", vq_ckpt=None, codebook_size=256, compile=False)},
        vq_path,
    )  # fmt: skip
    assert _state_dicts_equal(load_vq(vq_path, TINY_VQ).state_dict(), vq_state)
    torch.save({"model": gpt_state, "args": training_args(extra=_NotAWeight())}, gpt_path)
    with pytest.raises(CheckpointError, match="it pickles .*_NotAWeight"):
        load_gpt(gpt_path, TINY_GPT)


def test_safetensors_under_a_pt_name_loads(tmp_path):
    """A safetensors file named .pt is read as safetensors (torch refused it, advising
    weights_only=False)."""
    path = tmp_path / "c2i_tiny.pt"
    path.write_bytes(fixture_path("llamagen_gpt_{tag}.safetensors").read_bytes())
    config = GPTConfig.from_official_args(
        {"dim": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256, "block_size": 16,
         "num_classes": 10}
    )  # fmt: skip
    assert load_gpt(path, config).config == config


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html>Not Found</html>", b"PK\x03\x04trunc"])
def test_an_unreadable_file_names_itself_without_torchs_advice(tmp_path, content, recwarn):
    """An HTML page or a truncated download saved as .pt: one message naming the file and the
    likely causes, never torch's advice to load with weights_only=False, and no warning."""
    path = tmp_path / "gpt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_gpt(path, TINY_GPT)
    message = str(error.value)
    assert message.startswith(f"{path} is not a PyTorch checkpoint readable with weights_only=True")
    assert "an HTML page?" in message and "weights_only` set to `False" not in message
    assert "issue" not in message and len(message.splitlines()) == 1
    assert not recwarn.list


class _NotAWeight:
    pass
