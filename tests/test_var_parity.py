"""VAR parity against outputs of the official FoundationVision code (the fixtures' README).

Models are built from the official constructor arguments recorded in ``README_<tag>.json``,
so any fixture set of the same layout (``DD_PARITY_DIR`` / ``DD_PARITY_TAG``) checks them.
Tolerances are those the fixture README states for float32 on CPU.
"""

import dataclasses

import pytest
import torch

from teachers.protocol import SamplingConfig, Teacher
from teachers.sampling import sample_tokens
from teachers.var import VARConfig, VARTeacher, VQVAEConfig, load_var_teacher
from tests.parity import fixture_path, load_fixture, load_parity_json

ATOL = 1e-4


@pytest.fixture(scope="module")
def official() -> dict:
    return load_parity_json()["var"]


@pytest.fixture(scope="module")
def teacher(official) -> VARTeacher:
    args = official["official_args"]
    return load_var_teacher(
        fixture_path("var_{tag}.safetensors"),
        fixture_path("var_vqvae_{tag}.safetensors"),
        var_config=VARConfig.from_official_args(args),
        vae_config=VQVAEConfig.from_official_args(args),
    )


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_fixture("var_{tag}_io.safetensors")


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, atol=ATOL, rtol=ATOL)


def test_teacher_satisfies_protocol(teacher, official, io):
    assert isinstance(teacher, Teacher)
    assert teacher.family == "var"
    patch_nums = tuple(official["official_args"]["patch_nums"])
    assert teacher.geometry.step_grids == tuple((p, p) for p in patch_nums)
    assert teacher.geometry.num_tokens == io["indices_all_scales"].shape[1]
    assert teacher.codebook.shape == (teacher.vae.config.vocab_size, teacher.vae.config.z_channels)
    assert teacher.vae.config.image_size == official["image_size"] == io["image"].shape[-1]


@torch.no_grad()
def test_multiscale_encoding_matches_official(teacher, io):
    tokens, f_hat = teacher.vae.encode(io["image"])
    assert torch.equal(tokens, io["indices_all_scales"])
    assert close(f_hat, io["f_hat"])


@torch.no_grad()
def test_reconstruction_matches_official(teacher, io):
    images = teacher.vae.indices_to_img(io["indices_all_scales"])  # [-1, 1] like the fixture
    assert close(images, io["reconstruction"])
    assert close(
        teacher.decode_tokens(io["indices_all_scales"]), io["reconstruction"].add(1).mul(0.5)
    )


@torch.no_grad()
def test_next_scale_inputs_match_official(teacher, io):
    x_BLCv = teacher.vae.quantize.indices_to_var_input(io["indices_all_scales"])
    assert close(x_BLCv, io["var_input_teacher_forcing"])


@torch.no_grad()
def test_teacher_forcing_logits_match_official(teacher, io):
    direct = teacher.var(io["labels"], io["var_input_teacher_forcing"])
    assert close(direct, io["logits_teacher_forcing"])
    via_tokens = teacher.logits_teacher_forcing(io["labels"], io["indices_all_scales"])
    assert close(via_tokens, io["logits_teacher_forcing"])


@torch.no_grad()
def test_greedy_cfg_sampling_matches_official(teacher, io):
    """Official ``autoregressive_infer_cfg(cfg=1.5, top_k=1)`` == argmax through the session."""
    sampling = SamplingConfig(cfg_scale=1.5, cfg_schedule="linear")
    labels = io["labels"]
    chosen = []
    with teacher.start(labels, sampling) as session:
        for k in range(teacher.geometry.num_steps):
            log_probs = session.next_log_probs()
            p = teacher.geometry.step_grids[k][0]
            assert log_probs.shape == (len(labels), p * p, teacher.vae.config.vocab_size)
            tokens = log_probs.argmax(-1)
            session.accept(tokens)
            chosen.append(tokens)
        image = session.image()
    tokens = torch.cat(chosen, dim=1)
    assert torch.equal(tokens, io["greedy_cfg1p5_tokens"])
    assert close(image, io["greedy_cfg1p5_image_0to1"])
    assert close(teacher.decode_tokens(tokens), io["greedy_cfg1p5_image_0to1"])
    # The family-independent loop gives the same sequence, greedy or as a multinomial draw
    # after top-k 1 (the official top_k=1 run).
    assert torch.equal(
        sample_tokens(teacher, labels, sampling, greedy=True), io["greedy_cfg1p5_tokens"]
    )
    top_1 = dataclasses.replace(sampling, top_k=1)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(
        sample_tokens(teacher, labels, top_1, generator=generator), io["greedy_cfg1p5_tokens"]
    )
