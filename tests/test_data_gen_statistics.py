"""Pairs carry the teacher's distribution: token frequencies of mapped pairs vs plain samples.

AR flow matching pushes N(0, I) onto each step's guided distribution (DD Sec. 3.2), so the
tokens of generated pairs must be distributed as the teacher's own samples with the same labels
and settings. Test: the statistic is the total-variation distance between the two data sets'
per-position token frequencies, averaged over the 16 positions; its null distribution comes
from permutations of the pooled sequences (whole sequences are exchanged, so within-sequence
dependence is kept). The pairs pass if the permutation p-value is >= ALPHA. The same test must
reject samples drawn with another CFG scale (it has power at this sample size). Seeds are
fixed: the outcome is deterministic. Teacher: the official-parity LlamaGen fixture (V=256,
4x4 tokens, 10 classes, CFG 2.0).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from parity import llamagen_fixture_spec

from data_gen.config import FlowSettings
from data_gen.pairs import draw_sample, map_noise
from dd.teacher_spec import load_teacher
from teachers.sampling import sample_tokens

NUM_SAMPLES = 3000
NUM_PERMUTATIONS = 200
ALPHA = 0.01
BATCH = 1000


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(llamagen_fixture_spec())


def mean_position_tv(a_NL: torch.Tensor, b_NL: torch.Tensor, vocab_size: int) -> float:
    """Mean over positions of TV(frequencies of a, frequencies of b); equal sizes."""
    num, length = a_NL.shape
    offsets = torch.arange(length) * vocab_size
    hist_a = torch.bincount((a_NL + offsets).reshape(-1), minlength=length * vocab_size)
    hist_b = torch.bincount((b_NL + offsets).reshape(-1), minlength=length * vocab_size)
    return ((hist_a - hist_b).abs().sum() / (2 * num * length)).item()


def permutation_p_value(a_NL: torch.Tensor, b_NL: torch.Tensor, vocab_size: int) -> float:
    observed = mean_position_tv(a_NL, b_NL, vocab_size)
    pooled = torch.cat([a_NL, b_NL])
    generator = torch.Generator().manual_seed(0)
    exceed = 0
    for _ in range(NUM_PERMUTATIONS):
        order = torch.randperm(len(pooled), generator=generator)
        split = pooled[order]
        exceed += mean_position_tv(split[: len(a_NL)], split[len(a_NL) :], vocab_size) >= observed
    return (1 + exceed) / (1 + NUM_PERMUTATIONS)


def test_pair_tokens_are_distributed_as_teacher_samples(teacher):
    sampling = teacher.default_sampling()
    flow = FlowSettings()
    vocab_size, code_dim = teacher.codebook.shape
    drawn = [
        draw_sample(0, i, num_tokens=16, code_dim=code_dim, num_classes=10)
        for i in range(NUM_SAMPLES)
    ]
    labels = torch.tensor([label for label, _ in drawn])
    noise = torch.stack([n for _, n in drawn])
    pairs = torch.cat(
        [
            map_noise(teacher, labels[i : i + BATCH], noise[i : i + BATCH], sampling, flow)
            for i in range(0, NUM_SAMPLES, BATCH)
        ]
    )
    generator = torch.Generator().manual_seed(1)
    samples = sample_tokens(teacher, labels, sampling, generator=generator)
    p_value = permutation_p_value(pairs, samples, vocab_size)
    assert p_value >= ALPHA, f"pairs differ from teacher samples: p = {p_value:.3f}"

    # Power: samples at another guidance scale are told apart at this sample size.
    other = dataclasses.replace(sampling, cfg_scale=1.0)
    shifted = sample_tokens(teacher, labels, other, generator=generator)
    assert permutation_p_value(pairs, shifted, vocab_size) < ALPHA
