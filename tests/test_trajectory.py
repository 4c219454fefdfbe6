"""Eq. 5-7 as pure functions (dd/trajectory.py): trajectory inputs, the prefix rule, the CE term."""

import pytest
import torch

from dd.trajectory import (
    apply_prefix,
    check_timesteps,
    data_mask,
    predicted_token_cross_entropy,
    step_boundaries,
    trajectory_input,
)
from teachers.protocol import TokenGeometry

VAR_GEOMETRY = TokenGeometry.multiscale((1, 2, 3, 4))  # 30 tokens, 4 steps
RASTER_GEOMETRY = TokenGeometry.raster(4, 4)  # 16 tokens, 16 steps


def random_pair(batch: int, num_tokens: int, vocab: int = 11, width: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, num_tokens, width, generator=generator)
    tokens = torch.randint(vocab, (batch, num_tokens), generator=generator)
    codebook = torch.randn(vocab, width, generator=generator)
    return noise, tokens, codebook


def test_boundaries_are_the_starts_of_the_ar_steps():
    assert step_boundaries((0, 2, 3), VAR_GEOMETRY).tolist() == [0, 5, 14]
    assert step_boundaries((0, 9), RASTER_GEOMETRY).tolist() == [0, 9]


@pytest.mark.parametrize(
    "timesteps, message",
    [
        ((), "at least one"),
        ((1, 2), "start at AR step 0"),
        ((0, 2, 2), "strictly increasing"),
        ((0, 4), "not an AR step boundary"),
    ],
)
def test_bad_timesteps_are_refused(timesteps, message):
    with pytest.raises(ValueError, match=message):
        check_timesteps(timesteps, VAR_GEOMETRY)


@pytest.mark.parametrize("geometry", [VAR_GEOMETRY, RASTER_GEOMETRY], ids=["var", "raster"])
def test_trajectory_input_holds_codes_before_and_noise_after_every_boundary(geometry):
    n = geometry.num_tokens
    noise, tokens, codebook = random_pair(geometry.num_steps, n)
    boundary = torch.tensor([start for start, _ in geometry.step_ranges])
    inputs = trajectory_input(noise, tokens, codebook, boundary)
    for row, start in enumerate(boundary.tolist()):
        assert torch.equal(inputs[row, :start], codebook[tokens[row, :start]])
        assert torch.equal(inputs[row, start:], noise[row, start:])
    assert data_mask(boundary, n).sum(1).tolist() == boundary.tolist()


def test_trajectory_input_rejects_mismatched_shapes():
    noise, tokens, codebook = random_pair(2, 5)
    with pytest.raises(ValueError, match="codebook width"):
        trajectory_input(noise, tokens, codebook[:, :2], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        trajectory_input(noise, tokens[:, :4], codebook, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="boundary"):
        trajectory_input(noise, tokens, codebook, torch.zeros(3, dtype=torch.long))


def test_prefix_rule_returns_the_input_before_the_boundary_and_the_prediction_after():
    noise, tokens, codebook = random_pair(3, 16, vocab=7)
    boundary = torch.tensor([0, 5, 15])
    inputs = trajectory_input(noise, tokens, codebook, boundary)
    logits = torch.randn(3, 16, 7, requires_grad=True)
    embeddings = torch.randn(3, 16, 3, requires_grad=True)
    out_logits, out_embeddings = apply_prefix(logits, embeddings, inputs, tokens, boundary)
    for row, start in enumerate(boundary.tolist()):
        assert torch.equal(out_logits[row, :start].argmax(-1), tokens[row, :start])
        assert torch.equal(out_logits[row, :start].logsumexp(-1), torch.zeros(start))
        assert torch.equal(out_embeddings[row, :start], inputs[row, :start])
        assert torch.equal(out_logits[row, start:], logits[row, start:])
        assert torch.equal(out_embeddings[row, start:], embeddings[row, start:])
    # No gradient reaches the student's outputs at prefix positions.
    (out_logits.masked_fill(out_logits.isinf(), 0).sum() + out_embeddings.sum()).backward()
    assert logits.grad[2, :15].abs().sum() == 0 and logits.grad[2, 15:].abs().sum() > 0
    assert embeddings.grad[1, :5].abs().sum() == 0 and embeddings.grad[1, 5:].abs().sum() > 0


def test_cross_entropy_counts_only_predicted_positions_and_weighs_samples_equally():
    tokens = torch.tensor([[1, 2, 0, 1], [0, 0, 2, 2]])
    logits = torch.randn(2, 4, 3)
    boundary = torch.tensor([1, 3])
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    expected = (nll[0, 1:].mean() + nll[1, 3:].mean()) / 2
    # Prefix positions hold the Dirac of Eq. 6 for a different token: they must not count.
    noise, _, codebook = random_pair(2, 4, vocab=3)
    inputs = trajectory_input(noise, tokens, codebook, boundary)
    prefixed, _ = apply_prefix(logits, inputs, inputs, (tokens + 1) % 3, boundary)
    got = predicted_token_cross_entropy(prefixed, tokens, boundary)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
