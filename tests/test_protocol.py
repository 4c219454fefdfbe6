"""The Teacher protocol's own pieces: geometry, sampling settings, logit filtering."""

import math

import pytest
import torch

from teachers.protocol import (
    ContinuousSamplingConfig,
    SamplingConfig,
    TokenGeometry,
    add_code_scores_,
    check_labels,
)
from teachers.sampling import filter_logits, sample_from_log_probs


def test_var_geometry_matches_paper_token_count():
    geometry = TokenGeometry.multiscale((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    assert geometry.num_tokens == 680 and geometry.num_steps == 10
    assert geometry.step_ranges[:3] == ((0, 1), (1, 5), (5, 14))
    assert geometry.step_ranges[-1] == (424, 680)


def test_llamagen_geometry_is_one_token_per_step():
    geometry = TokenGeometry.raster(16, 16)
    assert geometry.num_tokens == geometry.num_steps == 256
    assert geometry.step_ranges[5] == (5, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"cfg_schedule": "cosine"}, "cfg_schedule"),
        # NaN passes every comparison; inf temperature would draw uniformly; 2.5 codes
        ({"temperature": math.nan}, "temperature must be finite"),
        ({"temperature": math.inf}, "temperature must be finite"),
        ({"cfg_scale": math.nan}, "cfg_scale must be finite"),
        ({"cfg_interval": math.inf}, "cfg_interval must be finite"),
        ({"top_p": math.nan}, "top_p must be finite"),
        ({"top_k": 2.5}, "top_k must be an integer"),
        ({"top_k": True}, "top_k must be an integer"),
    ],
)
def test_sampling_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_steps": 0}, "head_steps"),
        ({"head_steps": True}, "head_steps"),
        ({"cfg_scale": -1.0}, "cfg_scale must be >= 0"),
        ({"cfg_scale": math.nan}, "cfg_scale must be finite"),
        ({"cfg_scale": math.inf}, "cfg_scale must be finite"),
    ],
)
def test_continuous_sampling_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContinuousSamplingConfig(**kwargs)


def test_check_labels_names_bad_labels():
    check_labels(torch.tensor([0, 9]), 10)
    with pytest.raises(ValueError, match=r"\[10\]"):
        check_labels(torch.tensor([3, 10]), 10)
    check_labels(torch.tensor([10]), 10, allow_null=True)
    with pytest.raises(ValueError, match="integers"):
        check_labels(torch.tensor([1.0]), 10)


def test_top_k_keeps_exactly_k_codes():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    kept = torch.isfinite(filter_logits(logits, top_k=7)).sum(-1)
    assert kept.tolist() == [7] * 4


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept_all = torch.isfinite(filter_logits(probs.log(), top_p=0.96))
    assert kept_all.tolist() == [[True, True, True, True]]
    # The most likely code always survives.
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.01)).tolist() == [
        [True, False, False, False]
    ]


def test_add_code_scores_in_place_equals_the_plain_sum_in_value_and_gradient():
    """``add_code_scores_`` on a view of a graph tensor: the values and both gradients of
    ``logits[:, 1:] + alpha <v, c>`` written out of place (float32, 1e-5)."""
    generator = torch.Generator().manual_seed(0)
    codebook_VC = torch.randn(7, 3, generator=generator)
    weight = torch.randn(5, 7, generator=generator)
    x = torch.randn(2, 4, 5, generator=generator, requires_grad=True)
    v = torch.randn(2, 3, 3, generator=generator, requires_grad=True)
    plain = x @ weight
    plain = torch.cat([plain[:, :1], plain[:, 1:] + 0.5 * (v @ codebook_VC.T)], dim=1)
    grads = torch.autograd.grad(plain.square().sum(), [x, v])
    in_place = x @ weight
    add_code_scores_(in_place[:, 1:], v, codebook_VC, alpha=0.5)
    torch.testing.assert_close(in_place, plain, atol=1e-5, rtol=1e-5)
    got_grads = torch.autograd.grad(in_place.square().sum(), [x, v])
    for got, expected in zip(got_grads, grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_token_draw_runs_on_its_generators_device(monkeypatch):
    """torch refuses a generator of another device than the draw (a CPU generator with a
    teacher on the GPU: the evaluators' and the README's case). ``sample_from_log_probs``
    draws where the generator is and returns on the device of the log-probs: the same draw as
    a plain CPU multinomial on the CPU; with fake CUDA log-probs (``FakeTensorMode``, no GPU
    needed; fake kernels ignore the generator, so a spy reads the devices) the draw runs on
    the CPU and the tokens come back on CUDA."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    seen = []
    multinomial = torch.multinomial

    def spy(probs, count, *, generator=None):
        seen.append((probs.device.type, generator.device.type))
        return multinomial(probs, count, generator=generator)

    log_probs = torch.randn(3, 5, 7).log_softmax(-1)
    expected = torch.multinomial(
        log_probs.exp().reshape(-1, 7), 1, generator=torch.Generator().manual_seed(0)
    ).reshape(3, 5)
    monkeypatch.setattr(torch, "multinomial", spy)
    assert torch.equal(sample_from_log_probs(log_probs, torch.Generator().manual_seed(0)), expected)
    with FakeTensorMode(allow_non_fake_inputs=True):
        on_cuda = torch.empty(3, 5, 7, device="cuda")
        drawn = sample_from_log_probs(on_cuda, torch.Generator().manual_seed(0))
    assert drawn.device.type == "cuda" and drawn.shape == (3, 5)
    assert seen == [("cpu", "cpu"), ("cpu", "cpu")]
