"""Pairs carry the teacher's distribution: token frequencies of mapped pairs vs plain samples.

AR flow matching pushes N(0, I) onto each step's guided distribution (DD Sec. 3.2), so the
tokens of generated pairs must be distributed as the teacher's own samples with the same labels
and settings. Test: the statistic is the total-variation distance between the two data sets'
per-position token frequencies, averaged over the 64 positions; its null distribution comes
from permutations of the pooled sequences (whole sequences are exchanged, so within-sequence
dependence is kept). The pairs pass if the permutation p-value is >= ALPHA. The same test must
reject samples drawn with another CFG scale (it has power at this sample size). Seeds are
fixed: the outcome is deterministic.

Teacher: the shipped tiny LlamaGen (``{tiny: llamagen-digits}``: 8x8 = 64 tokens in 64 AR
steps, V=64, C=8, 10 classes) at its recommended sampling (constant CFG 2.0). Tolerance: an
exact map fails with probability ALPHA (1 %); the 16-NFE map is not exact, and this test bounds
how far it may be from the teacher at this sample size. Power: the alternative is the same
teacher at CFG 1.0, which the test must reject. Measured while choosing NUM_SAMPLES (same
seeds, statistic and permutations): at 1,000 samples per set, pairs vs samples p = 0.46, CFG 1.0
p = 0.005 (the smallest p 200 permutations can give), CFG 1.5 p = 0.025; at 2,000, p = 0.75,
0.005 and 0.005. NUM_SAMPLES sits between, for time (two sample sets and one pair set of 64
AR steps each).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from data_gen.config import FlowSettings
from data_gen.pairs import draw_sample, map_noise
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.sampling import sample_tokens
from teachers.tiny.registry import tiny_sampling

TEACHER = "llamagen-digits"
NUM_SAMPLES = 1500
NUM_PERMUTATIONS = 200
ALPHA = 0.01
BATCH = 500
OTHER_CFG_SCALE = 1.0  # the alternative of the power check (the teacher's own is 2.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(TeacherSpec(tiny=TEACHER))


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
    sampling = tiny_sampling(TEACHER)
    flow = FlowSettings()
    vocab_size, code_dim = teacher.codebook.shape
    num_tokens, num_classes = teacher.geometry.num_tokens, teacher.num_classes
    drawn = [
        draw_sample(0, i, num_tokens=num_tokens, code_dim=code_dim, num_classes=num_classes)
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
    assert sampling.cfg_scale != OTHER_CFG_SCALE
    other = dataclasses.replace(sampling, cfg_scale=OTHER_CFG_SCALE)
    shifted = sample_tokens(teacher, labels, other, generator=generator)
    p_other = permutation_p_value(pairs, shifted, vocab_size)
    assert p_other < ALPHA, f"CFG {OTHER_CFG_SCALE} not told apart: p = {p_other:.3f}"
