"""Parity with the official LlamaGen code on the fixtures it produced (tests/parity.py).

The models are built from the official constructor arguments in ``README_<tag>.json`` and
loaded through the public loaders, so any fixture set of the same layout checks them.
Golden values: the official FoundationVision code, CPU, float32 (fixtures README).
"""

import pytest
import torch

from teachers.llamagen import (
    GPTConfig,
    LlamaGenTeacher,
    VQConfig,
    load_gpt,
    load_llamagen_teacher,
    load_vq,
)
from teachers.protocol import SamplingConfig, Teacher
from teachers.sampling import sample_tokens
from tests.parity import fixture_path, load_fixture, load_parity_json

ATOL = 1e-4
GREEDY_CFG_SCALE = (
    2.0  # the fixture's greedy_cfg2_tokens = official generate(cfg_scale=2.0, top_k=1)
)


def assert_close(actual, expected):
    """Fixture agreement: absolute 1e-4, relative 1e-4 for large values."""
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=ATOL)


@pytest.fixture(scope="module")
def configs():
    spec = load_parity_json()
    gpt_spec, vq_spec = spec["llamagen_gpt"], spec["llamagen_vq"]
    gpt_config = GPTConfig.from_official_args(
        gpt_spec["official_args"], cls_token_num=gpt_spec["cls_token_num"]
    )
    return gpt_config, VQConfig.from_official_args(vq_spec["official_args"])


@pytest.fixture(scope="module")
def teacher(configs):
    gpt_config, vq_config = configs
    return load_llamagen_teacher(
        fixture_path("llamagen_gpt_{tag}.safetensors"),
        fixture_path("llamagen_vq_{tag}.safetensors"),
        gpt_config=gpt_config,
        vq_config=vq_config,
    )


@pytest.fixture(scope="module")
def gpt_io():
    return load_fixture("llamagen_gpt_{tag}_io.safetensors")


@pytest.fixture(scope="module")
def vq_io():
    return load_fixture("llamagen_vq_{tag}_io.safetensors")


def test_teacher_satisfies_protocol(teacher):
    assert isinstance(teacher, Teacher)
    assert teacher.family == "llamagen"
    assert teacher.null_class == teacher.num_classes
    # The official LabelEmbedder adds one null row when class_dropout_prob > 0.
    table = teacher.gpt.cls_embedding.embedding_table.weight
    assert table.shape[0] == teacher.num_classes + 1


@torch.no_grad()
def test_teacher_forcing_logits_match_official(teacher, gpt_io):
    labels, tokens = gpt_io["labels"], gpt_io["tokens"]
    assert_close(teacher.logits_teacher_forcing(labels, tokens), gpt_io["logits_teacher_forcing"])
    null_labels = torch.full_like(labels, teacher.null_class)
    assert_close(
        teacher.logits_teacher_forcing(null_labels, tokens),
        gpt_io["logits_teacher_forcing_null_class"],
    )


def test_greedy_cfg_through_protocol_session_matches_official(teacher, gpt_io):
    sampling = SamplingConfig(cfg_scale=GREEDY_CFG_SCALE)
    tokens = sample_tokens(teacher, gpt_io["labels"], sampling, greedy=True)
    assert torch.equal(tokens, gpt_io["greedy_cfg2_tokens"].long())


def test_multinomial_sampler_with_top_k_1_matches_official(teacher, gpt_io):
    """The official greedy run is ``generate(top_k=1)``: a multinomial draw after top-k."""
    sampling = SamplingConfig(cfg_scale=GREEDY_CFG_SCALE, top_k=1)
    generator = torch.Generator().manual_seed(0)
    tokens = sample_tokens(teacher, gpt_io["labels"], sampling, generator=generator)
    assert torch.equal(tokens, gpt_io["greedy_cfg2_tokens"].long())


@torch.no_grad()
def test_vq_indices_and_decode_match_official(teacher, vq_io):
    _, indices = teacher.vq.encode(vq_io["image"])
    assert torch.equal(indices, vq_io["indices"])
    height, width = vq_io["image"].shape[-2:]
    grid = (
        height // teacher.vq.config.downsample_factor,
        width // teacher.vq.config.downsample_factor,
    )
    assert_close(teacher.vq.decode_code(vq_io["indices"], grid), vq_io["decoded"])


@torch.no_grad()
def test_teacher_decode_paths_agree_with_official_decode(teacher, vq_io):
    # The shipped fixture set's VQ grid is the GPT's (a set where it is not would test nothing)
    assert teacher.geometry.num_tokens == vq_io["indices"].shape[1]
    expected = ((vq_io["decoded"] + 1) / 2).clamp(0, 1)
    assert_close(teacher.decode_tokens(vq_io["indices"]), expected)
    embeddings = teacher.codebook[vq_io["indices"]]
    assert_close(teacher.decode_embeddings(embeddings), expected)


def test_loaders_accept_preset_free_official_configs(configs):
    gpt_config, vq_config = configs
    gpt = load_gpt(fixture_path("llamagen_gpt_{tag}.safetensors"), gpt_config)
    vq = load_vq(fixture_path("llamagen_vq_{tag}.safetensors"), vq_config)
    assert isinstance(LlamaGenTeacher(gpt, vq).fingerprint(), str)
