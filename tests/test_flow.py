"""AR flow-matching map (dd/flow.py, dd/solver.py): math, fidelity to p, determinism, inputs.

Statistical tests use fixed seeds; their thresholds come from docs/flow_matching.md, where the
same quantities are measured over more seeds and settings.
"""

import math

import pytest
import torch

import dd.flow as flow
import dd.solver as solver
from dd.flow import (
    expected_sampling_tv,
    flow_match_tokens,
    noise_prediction,
    posterior_logits,
    posterior_mean,
    posterior_weights,
    total_variation,
    velocity,
)
from dd.solver import dpm_solver_pp, log_snr, time_schedule

NUM_DRAWS = 20_000
TV_OVER_FLOOR_MAX = 1.25  # acceptance: TV <= 1.25 x the multinomial sampling floor
REFERENCE_STEPS = 300  # order 3, logSNR spacing on [1e-5, 1-1e-5], float64
REFERENCE_TOKENS = 300
REFERENCE_AGREEMENT_MIN = 0.97  # measured 0.98-1.00 at the defaults (docs/flow_matching.md)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def llamagen_like_codebook(vocab_size=256, code_dim=8, seed=0):
    codebook = torch.randn(vocab_size, code_dim, generator=_generator(seed), dtype=torch.float64)
    return codebook / codebook.norm(dim=-1, keepdim=True)  # LlamaGen's codes are L2-normalised


def var_like_codebook(seed=0):
    return 0.5 * torch.randn(4096, 32, generator=_generator(seed), dtype=torch.float64)


def log_probs_with_perplexity(vocab_size, target, seed):
    """log_softmax(logits / T) of Gaussian logits, T bisected to give exp(entropy) = target."""
    logits = torch.randn(vocab_size, generator=_generator(seed), dtype=torch.float64)
    low, high = -8.0, 8.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        log_p = torch.log_softmax(logits / math.exp(mid), -1)
        perplexity = math.exp(-(log_p.exp() * log_p).sum().item())
        low, high = (mid, high) if perplexity < target else (low, mid)
    return torch.log_softmax(logits / math.exp(0.5 * (low + high)), -1)


def local_log_probs(codebook, target, seed):
    """Mass on the geometric neighbours of one code: the ODE's hardest, latest decisions."""
    anchor = codebook[torch.randint(codebook.shape[0], (1,), generator=_generator(seed))]
    score = -(codebook - anchor).square().sum(-1)
    low, high = -8.0, 8.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        log_p = torch.log_softmax(score / math.exp(mid), -1)
        perplexity = math.exp(-(log_p.exp() * log_p).sum().item())
        low, high = (mid, high) if perplexity < target else (low, mid)
    return torch.log_softmax(score / math.exp(0.5 * (low + high)), -1)


# --- schedule and solver ------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["logsnr", "time"])
def test_time_schedule_ends_and_spacing(spacing):
    times = time_schedule(10, spacing=spacing, t_start=0.01, t_end=0.99)
    assert len(times) == 11 and times[0] == 0.01 and times[-1] == 0.99
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    steps = torch.tensor([log_snr(t) for t in times] if spacing == "logsnr" else times).diff()
    torch.testing.assert_close(steps, steps.mean().expand_as(steps))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_steps": 0, "t_start": 0.1, "t_end": 0.9}, "num_steps"),
        ({"num_steps": 5, "t_start": 0.0, "t_end": 0.9}, "t_start"),
        ({"num_steps": 5, "t_start": 0.1, "t_end": 1.0}, "t_end"),
        ({"num_steps": 5, "t_start": 0.1, "t_end": 0.9, "spacing": "karras"}, "spacing"),
    ],
)
def test_time_schedule_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        time_schedule(**kwargs)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_solver_is_exact_when_the_data_prediction_is_constant(order):
    # With m constant the ODE dx/dt = (m - x)/(1-t) has x_t = m + (x_s - m)(1-t)/(1-s); the
    # exponential integrator of DPM-Solver++ reproduces it for every order and step count.
    target = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x_start = torch.tensor([2.0, 0.5], dtype=torch.float64)
    times = time_schedule(7, t_start=0.05, t_end=0.95)
    x_end = dpm_solver_pp(lambda x, t: target, x_start, times, order=order)
    expected = target + (x_start - target) * (1 - 0.95) / (1 - 0.05)
    torch.testing.assert_close(x_end, expected, rtol=0, atol=1e-12)


def _schedule_with_negligible_warm_up(num_steps):
    """logSNR-uniform steps on [0.05, 0.95] after two warm-up steps 1e-4 as long, so the
    lower-order warm-up does not mask the order of the multistep update itself."""
    lambdas = torch.linspace(log_snr(0.05), log_snr(0.95), num_steps + 1, dtype=torch.float64)
    h = (lambdas[1] - lambdas[0]).item()
    warm_up = [lambdas[0].item() - 2e-4 * h, lambdas[0].item() - 1e-4 * h]
    return torch.sigmoid(torch.tensor(warm_up + lambdas.tolist(), dtype=torch.float64)).tolist()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_solver_converges_at_its_order(order):
    # A smooth data prediction m(t) = sin(3t): halving h must divide the error by ~2^order.
    def data_prediction(x, t):
        return torch.full_like(x, math.sin(3 * t))

    x_start = torch.zeros(1, dtype=torch.float64)
    reference = dpm_solver_pp(data_prediction, x_start, _schedule_with_negligible_warm_up(20000))
    errors = [
        (
            dpm_solver_pp(
                data_prediction, x_start, _schedule_with_negligible_warm_up(n), order=order
            )
            - reference
        )
        .abs()
        .item()
        for n in (80, 160)
    ]
    assert errors[0] / errors[1] == pytest.approx(2.0**order, rel=0.15), errors


def test_the_official_third_order_coefficient_is_second_order(monkeypatch):
    """The official DPM-Solver code's order-3 update subtracts alpha' phi3 D2, half the exact
    term (dd/solver.py, docs/flow_matching.md): on the problem above its error falls by ~2^2
    per halving of h, not 2^3 (4.46 and 4.21 at 80 -> 160 -> 320 steps, printed by
    benchmarks/solver_order.py)."""
    monkeypatch.setattr(solver, "THIRD_ORDER_D2_FACTOR", 1.0)

    def data_prediction(x, t):
        return torch.full_like(x, math.sin(3 * t))

    x_start = torch.zeros(1, dtype=torch.float64)
    reference = dpm_solver_pp(data_prediction, x_start, _schedule_with_negligible_warm_up(20000))
    errors = [
        (dpm_solver_pp(data_prediction, x_start, _schedule_with_negligible_warm_up(n)) - reference)
        .abs()
        .item()
        for n in (80, 160)
    ]
    assert errors[0] / errors[1] == pytest.approx(2.0**2, rel=0.15), errors


def test_solver_rejects_bad_order():
    with pytest.raises(ValueError, match="order"):
        dpm_solver_pp(lambda x, t: x, torch.zeros(1), [0.1, 0.5], order=4)


# --- posterior, velocity, noise prediction ------------------------------------------------


def test_posterior_matches_the_unexpanded_formula_and_identities():
    codebook = llamagen_like_codebook(64)
    log_probs = log_probs_with_perplexity(64, 10.0, seed=1).expand(5, 64)
    x = torch.randn(5, 8, generator=_generator(2), dtype=torch.float64)
    t = 0.6
    direct = torch.softmax(
        log_probs - (x[:, None, :] - t * codebook).square().sum(-1) / (2 * (1 - t) ** 2), -1
    )  # DD paper Eq. 3 as written
    torch.testing.assert_close(posterior_weights(x, log_probs, codebook, t), direct)
    mean = posterior_mean(x, log_probs, codebook, t)
    torch.testing.assert_close(mean, direct @ codebook)
    torch.testing.assert_close(velocity(x, log_probs, codebook, t), (mean - x) / (1 - t))
    torch.testing.assert_close(
        noise_prediction(x, log_probs, codebook, t),
        x - t * velocity(x, log_probs, codebook, t),
    )
    # The path x_t = t m + (1-t) eps is recovered from the two predictions.
    torch.testing.assert_close(t * mean + (1 - t) * noise_prediction(x, log_probs, codebook, t), x)


def test_posterior_is_finite_near_t_one_and_exact_zero_on_masked_codes():
    codebook = var_like_codebook()
    log_probs = torch.randn(3, 4096, generator=_generator(3), dtype=torch.float64)
    log_probs[:, 100:] = float("-inf")  # top-k = 100
    x = 30.0 * torch.randn(3, 32, generator=_generator(4), dtype=torch.float64)
    for t in (1e-9, 0.5, 1 - 1e-4, 1 - 1e-7):
        weights = posterior_weights(x, log_probs, codebook, t)
        assert torch.isfinite(weights).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, dtype=torch.float64))
        assert (weights[:, 100:] == 0).all()
    assert torch.isfinite(posterior_logits(x, log_probs, codebook, 1 - 1e-7)[:, :100]).all()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_posterior_mean_matches_the_buffered_formula(dtype, tolerance):
    # The solver's fused pass (one scaled_dot_product_attention) against posterior_mean, with
    # whole 512-code blocks masked out (the CPU kernel streams codes in blocks of 512), a
    # one-hot row and a top-k row. Measured max |error| on this problem: 8e-7 in float32 and
    # 3e-15 in float64; the tolerances leave room for other CPUs' kernels.
    codebook = var_like_codebook()
    log_probs = torch.randn(6, 4096, generator=_generator(20), dtype=torch.float64)
    log_probs[0, :2048] = float("-inf")  # four whole blocks masked
    log_probs[1, 3000:] = float("-inf")
    log_probs[2] = float("-inf")
    log_probs[2, 1234] = 0.0  # one-hot
    top_7 = log_probs[3].topk(7).values[-1]
    log_probs[3] = log_probs[3].masked_fill(log_probs[3] < top_7, float("-inf"))
    log_probs = torch.log_softmax(log_probs, -1)
    x = torch.randn(6, 32, generator=_generator(21), dtype=torch.float64)
    fused = flow.fused_posterior_mean(log_probs.to(dtype), codebook.to(dtype))
    for t in (0.05, 0.5, 0.97):
        expected = posterior_mean(x, log_probs, codebook, t)
        got = fused(x.to(dtype), t)
        assert got.dtype == dtype and got.shape == (6, 32)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=tolerance)
        torch.testing.assert_close(got[2].double(), codebook[1234], rtol=0, atol=1e-6)


def test_the_fused_width_is_padded_for_cuda_kernels_without_changing_the_mean():
    # CUDA's memory-efficient SDPA kernel needs a width multiple of 4 (float32) / 8 (half);
    # VAR's C = 32 gives 33 on the CPU (the fastest there), 40 on CUDA.
    assert [flow.fused_width(c, "cpu") for c in (8, 32)] == [16, 33]
    assert [flow.fused_width(c, "cuda") for c in (8, 32)] == [16, 40]
    codebook = var_like_codebook().float()
    log_probs = torch.log_softmax(torch.randn(4, 4096, generator=_generator(22)), -1)
    x = torch.randn(4, 32, generator=_generator(23))
    cpu, padded = (flow.fused_posterior_mean(log_probs, codebook, min_width=w) for w in (16, 40))
    for t in (0.05, 0.5, 0.97):
        torch.testing.assert_close(padded(x, t), cpu(x, t), rtol=0, atol=1e-5)


# --- the map: distribution fidelity and accuracy ----------------------------------------


def _draw_tokens(codebook, log_probs_V, seed, num_draws=NUM_DRAWS):
    noise = torch.randn(num_draws, codebook.shape[1], generator=_generator(seed))
    return flow_match_tokens(noise, log_probs_V.expand(num_draws, -1), codebook)


@pytest.mark.parametrize(
    "shape, perplexity",
    [
        pytest.param("llamagen", 32.0, id="llamagen-peaked"),
        pytest.param("llamagen", 128.0, id="llamagen-flat"),
        # V=4096 is the costly shape (20,000 x 4096): one p, peaked; the flatter p (perplexity
        # 1024) gave TV/floor 0.998 in float32 and float64 (docs/flow_matching.md).
        pytest.param("var", 32.0, id="var-peaked"),
    ],
)
def test_token_frequencies_match_p_within_the_sampling_floor(shape, perplexity):
    codebook = llamagen_like_codebook() if shape == "llamagen" else var_like_codebook()
    log_probs = log_probs_with_perplexity(codebook.shape[0], perplexity, seed=5)
    tokens = _draw_tokens(codebook, log_probs, seed=6)
    probs = log_probs.exp()
    floor = expected_sampling_tv(probs, NUM_DRAWS)
    assert total_variation(tokens, probs) <= TV_OVER_FLOOR_MAX * floor


def test_expected_sampling_tv_matches_simulation():
    probs = log_probs_with_perplexity(256, 32.0, seed=7).exp()
    simulated = [
        total_variation(
            torch.multinomial(probs, 2000, replacement=True, generator=_generator(s)), probs
        )
        for s in range(200)
    ]
    assert expected_sampling_tv(probs, 2000) == pytest.approx(sum(simulated) / 200, rel=0.03)


@pytest.mark.parametrize("shape", ["llamagen", "var"])
def test_agrees_with_a_high_accuracy_reference_solve(shape):
    codebook = llamagen_like_codebook() if shape == "llamagen" else var_like_codebook()
    log_probs = local_log_probs(codebook, 32.0, seed=8).expand(REFERENCE_TOKENS, -1)
    noise = torch.randn(
        REFERENCE_TOKENS, codebook.shape[1], generator=_generator(9), dtype=torch.float64
    )
    reference = flow_match_tokens(
        noise,
        log_probs,
        codebook,
        num_steps=REFERENCE_STEPS,
        t_start=1e-5,
        t_end=1 - 1e-5,
        compute_dtype=torch.float64,
    )
    tokens = flow_match_tokens(noise, log_probs, codebook)
    assert (tokens == reference).double().mean() >= REFERENCE_AGREEMENT_MIN


# --- the map: exactness, masks, determinism ------------------------------------------------


def test_one_hot_p_returns_its_token_for_every_noise():
    codebook = var_like_codebook()
    chosen = torch.tensor([0, 17, 4095, 2000])
    log_probs = torch.full((4, 50, 4096), float("-inf"), dtype=torch.float64)
    log_probs[torch.arange(4), :, chosen] = 0.0
    noise = 5.0 * torch.randn(4, 50, 32, generator=_generator(10), dtype=torch.float64)
    tokens = flow_match_tokens(noise, log_probs, codebook)
    assert tokens.shape == (4, 50) and tokens.dtype == torch.long
    assert (tokens == chosen[:, None]).all()


@pytest.mark.parametrize("token_rule", ["argmax", "nearest"])
def test_masked_codes_are_never_returned(token_rule):
    codebook = llamagen_like_codebook()
    logits = 3.0 * torch.randn(2000, 256, generator=_generator(11), dtype=torch.float64)
    top_k_mask = logits < logits.topk(5, dim=-1).values[:, -1:]  # top-k = 5
    # HF-style top-p = 0.5 on the remaining rows' own logits
    sorted_probs, order = torch.softmax(logits, -1).sort(-1, descending=True)
    outside_sorted = sorted_probs.cumsum(-1) - sorted_probs > 0.5
    top_p_mask = torch.zeros_like(top_k_mask).scatter(-1, order, outside_sorted)
    mask = torch.where(torch.arange(2000)[:, None] % 2 == 0, top_k_mask, top_p_mask)
    noise = torch.randn(2000, 8, generator=_generator(12), dtype=torch.float64)
    tokens = flow_match_tokens(
        noise, logits.masked_fill(mask, float("-inf")), codebook, token_rule=token_rule
    )
    assert not mask.gather(-1, tokens[:, None]).any()


def test_same_noise_and_p_give_the_same_token_whatever_the_batch():
    codebook = var_like_codebook()
    log_probs = torch.stack([local_log_probs(codebook, 32.0, seed=s) for s in range(300)])
    noise = torch.randn(300, 32, generator=_generator(13), dtype=torch.float64)
    full = flow_match_tokens(noise, log_probs, codebook)
    permutation = torch.randperm(300, generator=_generator(14))
    shuffled = flow_match_tokens(noise[permutation], log_probs[permutation], codebook)
    assert torch.equal(shuffled, full[permutation])
    for begin, end in ((0, 1), (7, 8), (5, 9), (100, 231)):
        assert torch.equal(
            flow_match_tokens(noise[begin:end], log_probs[begin:end], codebook), full[begin:end]
        )
    for max_elements in (4096, 3 * 4096, 1000 * 4096):  # chunks of 1, 3 and all tokens
        assert torch.equal(
            flow_match_tokens(noise, log_probs, codebook, max_elements_per_chunk=max_elements),
            full,
        )
    # Leading dims are only a view: [3, 100] gives the same tokens as [300].
    assert torch.equal(
        flow_match_tokens(noise.view(3, 100, 32), log_probs.view(3, 100, -1), codebook),
        full.view(3, 100),
    )


def test_chunks_bound_the_working_set(monkeypatch):
    seen_rows = []
    solve = flow.solve_flow_ode

    def recording_solve(noise_NC, *args, **kwargs):
        seen_rows.append(noise_NC.shape[0])
        return solve(noise_NC, *args, **kwargs)

    monkeypatch.setattr(flow, "solve_flow_ode", recording_solve)
    codebook = llamagen_like_codebook()
    noise = torch.randn(1000, 8, generator=_generator(15))
    log_probs = torch.zeros(1000, 256)
    flow_match_tokens(noise, log_probs, codebook, num_steps=2, max_elements_per_chunk=256 * 64)
    assert max(seen_rows) == 64 and sum(seen_rows) == 1000


def test_inputs_of_any_float_dtype_are_computed_in_the_compute_dtype():
    codebook = llamagen_like_codebook().float()
    noise = torch.randn(500, 8, generator=_generator(16))
    log_probs = torch.randn(500, 256, generator=_generator(17))
    float32 = flow_match_tokens(noise, log_probs, codebook)  # default compute dtype: float32
    assert torch.equal(
        float32, flow_match_tokens(noise.double(), log_probs.double(), codebook.double())
    )
    half = flow_match_tokens(noise.half(), log_probs.half(), codebook.half())
    assert half.dtype == torch.long and half.shape == (500,)
    # float64 compute: the same tokens on this problem (and the same TV/floor and agreement
    # on every problem of docs/flow_matching.md, benchmarks/flow_tradeoff.py --dtypes)
    assert torch.equal(
        float32, flow_match_tokens(noise, log_probs, codebook, compute_dtype=torch.float64)
    )


# --- bad input -------------------------------------------------------------------------------


def _good_inputs():
    return torch.randn(4, 3, 8), torch.randn(4, 3, 256), llamagen_like_codebook()


def _with(index, value):
    inputs = list(_good_inputs())
    if callable(value):
        inputs[index] = value(inputs[index])
    else:
        inputs[index] = value
    return inputs


def _set(row, column, value):
    def edit(tensor):
        tensor = tensor.clone()
        tensor[row, column] = value
        return tensor

    return edit


@pytest.mark.parametrize(
    "inputs, message",
    [
        (_with(1, torch.randn(4, 2, 256)), "leading dims"),
        (_with(0, torch.randn(4, 8)), "leading dims"),
        (_with(2, torch.randn(255, 8)), r"codebook must be \[V, C\]"),
        (_with(2, torch.randn(256, 8, 1)), r"codebook must be \[V, C\]"),
        (_with(2, torch.randn(256, 4)), "codebook width 4"),
        (_with(1, _set(1, 2, float("nan"))), "NaN"),
        (_with(1, _set(2, 0, float("-inf"))), "all -inf"),
        (_with(1, _set(0, 0, float("inf"))), r"\+inf"),
        (_with(0, _set(0, 0, float("nan"))), "noise contains NaN"),
        (_with(0, lambda t: t.long()), "floating-point"),
    ],
    ids=[
        "lead-dims",
        "lead-dims-rank",
        "vocab",
        "codebook-rank",
        "width",
        "nan",
        "all-masked",
        "plus-inf",
        "noise-nan",
        "int-noise",
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(inputs, message):
    noise, log_probs, codebook = inputs
    with pytest.raises(ValueError, match=message):
        flow_match_tokens(noise, log_probs, codebook)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"order": 0}, "order"),
        ({"num_steps": 0}, "num_steps"),
        ({"token_rule": "mode"}, "token_rule"),
        ({"spacing": "cosine"}, "spacing"),
        ({"max_elements_per_chunk": 0}, "max_elements"),
        ({"compute_dtype": torch.float16}, "compute_dtype"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        flow_match_tokens(*_good_inputs(), **kwargs)
