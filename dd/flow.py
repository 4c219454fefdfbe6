"""AR flow matching: the deterministic map from a noise token to a codebook token (DD Sec. 3.2).

At one AR step the teacher gives a categorical p over the codebook rows c_1..c_V. DD treats p
as a mixture of Diracs in R^C and transports N(0, I) onto it along `x_t = (1-t) x_0 + t c`
(DD paper Sec. 3.2, Eq. 3):

    w_j(x, t) = softmax_j( log p_j - ||x - t c_j||^2 / (2 (1-t)^2) )    posterior weights
    m(x, t)   = sum_j w_j c_j                                           posterior mean
    V(x, t)   = (m - x) / (1 - t)                                       velocity
    eps(x, t) = x - t V = (x - t m) / (1 - t)                           noise prediction

Solving dx = V dt from x_0 = noise ends at a codebook entry; pushed through this map, N(0, I)
becomes exactly p. `flow_match_tokens` solves it with the multistep DPM-Solver++ of
`dd/solver.py`. Defaults were chosen by measurement: docs/flow_matching.md.

Arithmetic is float32 by default (`compute_dtype`; float64 available). Near t = 1 the
likelihood term is divided by (1-t)^2 after a cancellation between -2t x.c and t^2 ||c||^2:
at the default t_end = 0.99 ((1-t)^-2 = 1e4) float32 leaves logit errors of ~1e-3-1e-2 and
gave tokens identical to float64 in every measurement (docs/flow_matching.md, "Numerics"); for
t_end much closer to 1 (e.g. the 1 - 1e-5 of the reference solves) use float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from dd.solver import MAX_SOLVER_ORDER, SPACINGS, Spacing, dpm_solver_pp, time_schedule

TokenRule = Literal["argmax", "nearest"]
TOKEN_RULES: tuple[str, ...] = ("argmax", "nearest")

DEFAULT_COMPUTE_DTYPE = torch.float32  # measured: docs/flow_matching.md ("Numerics")
REFERENCE_DTYPE = torch.float64  # high-accuracy reference solves (t_end = 1 - 1e-5)
COMPUTE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
DEFAULT_NUM_STEPS = 16  # NFE; chosen in docs/flow_matching.md ("Choosing the defaults")
DEFAULT_ORDER = 3  # best at every NFE with logSNR spacing (same section)
DEFAULT_SPACING: Spacing = "logsnr"
DEFAULT_TOKEN_RULE: TokenRule = "argmax"  # never returns a code with p = 0, by construction
DEFAULT_T_START = 0.05  # lambda -2.9; reached from t = 0 by one Euler step, exact m(x, 0)
DEFAULT_T_END = 0.99  # lambda 4.6; the posterior argmax decides the rest
# Peak memory: one [chunk, V] buffer (final argmax); 2^22 elements = 16 MiB in float32.
DEFAULT_MAX_ELEMENTS_PER_CHUNK = 2**22


def posterior_logits(
    x: torch.Tensor,
    log_probs: torch.Tensor,
    codebook: torch.Tensor,
    t: float,
    code_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unnormalised log w_j(x, t), shape [..., V], for x [..., C], log_probs [..., V].

    ||x - t c||^2 = ||x||^2 - 2t x.c + t^2 ||c||^2; the ||x||^2 term is the same for every j
    and cancels in the softmax, so it is dropped:
        log p_j + (t x.c_j - t^2 ||c_j||^2 / 2) / (1-t)^2 = log p_j + a (x.c_j - t ||c_j||^2 / 2)
    with a = t / (1-t)^2. log_probs need not be normalised (softmax is shift-invariant).
    A code with log p_j = -inf keeps -inf (the likelihood term is finite for t < 1), so it gets
    weight exactly 0 without any NaN as long as the row has one finite entry.
    `code_sq_norms` ([V], ||c_j||^2) may be passed to avoid recomputing it at every step.
    """
    if code_sq_norms is None:
        code_sq_norms = codebook.square().sum(-1)
    scale = t / (1.0 - t) ** 2
    if x.dim() == 2:  # one fused pass over [N, V]: addmm of [x, -t/2] and [c, ||c||^2]
        queries = torch.cat([x, x.new_full((x.shape[0], 1), -0.5 * t)], dim=-1)
        keys = _augmented_keys(codebook, code_sq_norms, width=codebook.shape[1] + 1)
        return torch.addmm(log_probs, queries, keys.T, alpha=scale)
    return log_probs + scale * (x @ codebook.T - (0.5 * t) * code_sq_norms)


def posterior_weights(
    x: torch.Tensor,
    log_probs: torch.Tensor,
    codebook: torch.Tensor,
    t: float,
    code_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """w_j(x, t) of equation (3), shape [..., V]; softmax subtracts the row max (stable)."""
    return torch.softmax(posterior_logits(x, log_probs, codebook, t, code_sq_norms), dim=-1)


def posterior_mean(
    x: torch.Tensor,
    log_probs: torch.Tensor,
    codebook: torch.Tensor,
    t: float,
    code_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """m(x, t) = sum_j w_j c_j, the data prediction, shape [..., C]."""
    return posterior_weights(x, log_probs, codebook, t, code_sq_norms) @ codebook


def velocity(
    x: torch.Tensor, log_probs: torch.Tensor, codebook: torch.Tensor, t: float
) -> torch.Tensor:
    """V(x, t) = (m - x) / (1 - t), the flow-matching velocity (DD paper Eq. 3)."""
    return (posterior_mean(x, log_probs, codebook, t) - x) / (1.0 - t)


def noise_prediction(
    x: torch.Tensor, log_probs: torch.Tensor, codebook: torch.Tensor, t: float
) -> torch.Tensor:
    """eps(x, t) = x - t V(x, t) = (x - t m) / (1 - t): the form the paper hands its solver."""
    return (x - t * posterior_mean(x, log_probs, codebook, t)) / (1.0 - t)


def code_from_state(
    x: torch.Tensor,
    log_probs: torch.Tensor,
    codebook: torch.Tensor,
    t: float,
    rule: TokenRule,
) -> torch.Tensor:
    """The token of an end state x at time t: posterior argmax, or the nearest allowed code."""
    if rule == "argmax":
        return posterior_logits(x, log_probs, codebook, t).argmax(-1)
    # argmin_j ||x - c_j||^2 = argmax_j (x.c_j - ||c_j||^2 / 2), codes with p_j = 0 excluded.
    score = x @ codebook.T - 0.5 * codebook.square().sum(-1)
    return score.masked_fill(log_probs == float("-inf"), float("-inf")).argmax(-1)


def flow_match_tokens(
    noise: torch.Tensor,
    log_probs: torch.Tensor,
    codebook: torch.Tensor,
    *,
    num_steps: int = DEFAULT_NUM_STEPS,
    order: int = DEFAULT_ORDER,
    spacing: Spacing = DEFAULT_SPACING,
    token_rule: TokenRule = DEFAULT_TOKEN_RULE,
    t_start: float = DEFAULT_T_START,
    t_end: float = DEFAULT_T_END,
    max_elements_per_chunk: int = DEFAULT_MAX_ELEMENTS_PER_CHUNK,
    compute_dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE,
) -> torch.Tensor:
    """Map noise tokens [..., C] and log-probabilities [..., V] to codebook indices [...].

    `log_probs` may be unnormalised (logits: only softmaxes and argmaxes over V see them) and
    may hold -inf for codes removed by top-k/top-p: those are never returned. `codebook` is
    [V, C]. Each token is solved independently, `max_elements_per_chunk // V` tokens at a
    time; peak memory is one [chunk, V] buffer (the final argmax's logits, plus the cast of
    log_probs if its dtype differs) whatever the number of tokens. Inputs are cast to
    `compute_dtype` (float32 or float64). The result depends only on the token's own noise and
    p, up to round-off in `compute_dtype` (see docs/flow_matching.md, "Numerics").
    """
    _check_inputs(noise, log_probs, codebook)
    if order not in range(1, MAX_SOLVER_ORDER + 1):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if token_rule not in TOKEN_RULES:
        raise ValueError(f"token_rule must be one of {TOKEN_RULES}, got {token_rule!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if max_elements_per_chunk < 1:
        raise ValueError(f"max_elements_per_chunk must be >= 1, got {max_elements_per_chunk}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be float32 or float64, got {compute_dtype}")
    times = time_schedule(num_steps, spacing=spacing, t_start=t_start, t_end=t_end)

    vocab_size, code_dim = codebook.shape
    leading_shape = noise.shape[:-1]
    noise_NC = noise.reshape(-1, code_dim)
    log_probs_NV = log_probs.reshape(-1, vocab_size)
    codebook_VC = codebook.to(compute_dtype)
    chunk_tokens = max(1, max_elements_per_chunk // vocab_size)
    tokens_N = torch.empty(noise_NC.shape[0], dtype=torch.long, device=noise.device)
    for begin in range(0, noise_NC.shape[0], chunk_tokens):
        end = begin + chunk_tokens
        # Unnormalised log p is enough: every use is a softmax over j or an argmax over j.
        chunk_log_probs = log_probs_NV[begin:end].to(compute_dtype)
        x_end = solve_flow_ode(
            noise_NC[begin:end].to(compute_dtype),
            chunk_log_probs,
            codebook_VC,
            times,
            order=order,
        )
        tokens_N[begin:end] = code_from_state(
            x_end, chunk_log_probs, codebook_VC, times[-1], token_rule
        )
    return tokens_N.reshape(leading_shape)


def solve_flow_ode(
    noise_NC: torch.Tensor,
    log_probs_NV: torch.Tensor,
    codebook_VC: torch.Tensor,
    times: list[float],
    *,
    order: int = DEFAULT_ORDER,
) -> torch.Tensor:
    """End state x at times[-1] of the flow ODE from noise at t = 0 (no checks, no chunking).

    `log_probs_NV` may be unnormalised; all inputs in one float dtype.
    """
    data_prediction = fused_posterior_mean(log_probs_NV, codebook_VC)
    # Exact first-order step from t = 0, where the posterior is the prior: m(x, 0) = E_p[c]
    # whatever x, so x_{t_start} = (1 - t_start) noise + t_start E_p[c] (one fused pass at
    # scale 0, i.e. softmax(log p) @ c; not counted as an NFE).
    x_NC = (1.0 - times[0]) * noise_NC + times[0] * data_prediction(noise_NC, 0.0)
    return dpm_solver_pp(data_prediction, x_NC, times, order=order)


# q/k/v width of the fused pass: C + 1, but at least this. Timed, one evaluation of 512 float32
# tokens, by `python3 benchmarks/flow_width.py` (table and figures in docs/flow_matching.md,
# "Fused width"): at C = 8 padding to 16 is 1.65-1.71x faster than the unpadded 9 (and faster
# than 24, 32 or 64); at C = 32 the unpadded 33 is the fastest of 33/40/48/64.
FUSED_MIN_WIDTH = 16
# CUDA's memory-efficient SDPA kernel (the one that takes float32 and an arbitrary mask) needs
# the width to be a multiple of 4 for float32 and 8 for half precision; at 33 (VAR, C = 32)
# SDPA falls back to its math kernel, which writes the [N, V] buffers this pass avoids
# (PyTorch's sdp_utils; found by reading, not run: no GPU here).
CUDA_WIDTH_MULTIPLE = 8


def fused_width(code_dim: int, device_type: str, min_width: int = FUSED_MIN_WIDTH) -> int:
    """The q/k/v width of the fused pass: C + 1, at least ``min_width``; on CUDA rounded up to
    ``CUDA_WIDTH_MULTIPLE`` (zero columns change no dot product)."""
    width = max(code_dim + 1, min_width)
    if device_type == "cuda":
        width = -(-width // CUDA_WIDTH_MULTIPLE) * CUDA_WIDTH_MULTIPLE
    return width


def fused_posterior_mean(
    log_probs_NV: torch.Tensor, codebook_VC: torch.Tensor, *, min_width: int = FUSED_MIN_WIDTH
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """m(x, t) of equation (3) for fixed p as one fused online-softmax pass per call.

    The posterior logit is log p_j + a (x.c_j - t ||c_j||^2 / 2) with a = t / (1-t)^2
    (`posterior_logits`), i.e. attention of the query q = [x, -t/2] over keys k_j = [c_j,
    ||c_j||^2] with values c_j, scale a and additive mask log p. `scaled_dot_product_attention`
    computes softmax(a q.k + log p) @ c without writing any [N, V] buffer (the CPU flash kernel
    streams over codes), so an evaluation reads log p once; the whole map is 1.9x faster than
    with the buffered bias-add, addmm, softmax and matmul at V = 16384, C = 8
    (docs/benchmarks.md). log p = -inf still gives weight exactly 0. Inputs: `log_probs_NV`
    (normalised or not) and the codebook, in one float dtype. The returned function maps
    x [N, C] and t in [0, 1) to m [N, C]; at t = 0 it is the prior mean E_p[c]. The q/k/v
    width is ``fused_width`` (zero padding; benchmarks/flow_width.py times it).
    """
    vocab_size, code_dim = codebook_VC.shape
    width = fused_width(code_dim, codebook_VC.device.type, min_width)
    keys_VD = _augmented_keys(codebook_VC, codebook_VC.square().sum(-1), width=width)
    values_VD = codebook_VC.new_zeros(vocab_size, width)
    values_VD[:, :code_dim] = codebook_VC
    queries_ND = codebook_VC.new_zeros(log_probs_NV.shape[0], width)
    # SDPA's [batch, heads, length, width] layout, as views: one batch, one head.
    keys, values, mask = keys_VD[None, None], values_VD[None, None], log_probs_NV[None, None]

    def data_prediction(x_NC: torch.Tensor, t: float) -> torch.Tensor:
        queries_ND[:, :code_dim] = x_NC
        queries_ND[:, code_dim] = -0.5 * t
        mean = F.scaled_dot_product_attention(
            queries_ND[None, None], keys, values, attn_mask=mask, scale=t / (1.0 - t) ** 2
        )
        return mean[0, 0, :, :code_dim]

    return data_prediction


def _augmented_keys(codebook_VC: torch.Tensor, code_sq_norms_V: torch.Tensor, width: int):
    """Keys [c_j, ||c_j||^2, 0...] of width `width` (>= C + 1): their dot product with the
    query [x, -t/2] is x.c_j - t ||c_j||^2 / 2, the posterior logit's bracket."""
    vocab_size, code_dim = codebook_VC.shape
    keys_VD = codebook_VC.new_zeros(vocab_size, width)
    keys_VD[:, :code_dim] = codebook_VC
    keys_VD[:, code_dim] = code_sq_norms_V
    return keys_VD


def _check_inputs(noise: torch.Tensor, log_probs: torch.Tensor, codebook: torch.Tensor) -> None:
    """Raise ValueError naming the first problem found; silent on good input."""
    for name, tensor in (("noise", noise), ("log_probs", log_probs), ("codebook", codebook)):
        if not torch.is_floating_point(tensor):
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if noise.dim() < 1 or log_probs.dim() < 1:
        raise ValueError("noise must be [..., C] and log_probs [..., V] (at least 1-D)")
    if noise.shape[:-1] != log_probs.shape[:-1]:
        raise ValueError(
            f"leading dims differ: noise {tuple(noise.shape)} is [..., C], log_probs "
            f"{tuple(log_probs.shape)} is [..., V]; the '...' must be equal"
        )
    vocab_size, code_dim = log_probs.shape[-1], noise.shape[-1]
    if codebook.dim() != 2 or codebook.shape[0] != vocab_size:
        raise ValueError(
            f"codebook must be [V, C] = [{vocab_size}, {code_dim}] (V from log_probs), "
            f"got {tuple(codebook.shape)}"
        )
    if codebook.shape[1] != code_dim:
        raise ValueError(
            f"codebook width {codebook.shape[1]} does not match the noise width C = {code_dim}"
        )
    # One pass over [..., V]: a row max is NaN if the row holds a NaN, +inf if it holds +inf
    # and -inf only if every entry is -inf.
    row_max = log_probs.amax(-1)
    # One host sync for every check (this runs at every AR step of pair generation; each sync
    # stalls a GPU's queue); the checks one by one only to say which failed.
    bad = torch.stack(
        [
            ~torch.isfinite(noise).all(),
            ~torch.isfinite(codebook).all(),
            ~torch.isfinite(row_max).all(),  # NaN, +inf, or a row of only -inf
        ]
    )
    if not bool(bad.any()):
        return
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf")
    if not torch.isfinite(codebook).all():
        raise ValueError("codebook contains NaN or inf")
    if torch.isnan(row_max).any():
        raise ValueError("log_probs contains NaN")
    if (row_max == float("inf")).any():
        raise ValueError("log_probs contains +inf")
    all_masked = row_max == float("-inf")
    if all_masked.any():
        first = tuple(all_masked.nonzero()[0].tolist())
        raise ValueError(f"log_probs row {first} is all -inf: no code has positive probability")


# --- Measurement helpers: how close is the map's token histogram to p? ---------------------


def total_variation(tokens: torch.Tensor, probs_V: torch.Tensor) -> float:
    """TV distance 0.5 * sum_j |freq_j - p_j| between the empirical token frequencies and p."""
    counts_V = torch.bincount(tokens.reshape(-1), minlength=probs_V.numel()).to(torch.float64)
    return 0.5 * (counts_V / counts_V.sum() - probs_V.to(torch.float64)).abs().sum().item()


def expected_sampling_tv(probs_V: torch.Tensor, num_draws: int) -> float:
    """E[TV] of the empirical frequencies of `num_draws` exact samples from p: the floor.

    Exact, from the mean absolute deviation of each Binomial(n, p_j) (De Moivre):
    E|X - n p| = 2 k C(n, k) p^k (1-p)^(n-k+1) with k = floor(n p) + 1.
    """
    p = probs_V.to(torch.float64).reshape(-1)
    p = p[(p > 0) & (p < 1)]
    n = float(num_draws)
    k = torch.floor(n * p) + 1
    log_binom = torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    log_mad = torch.log(2 * k) + log_binom + k * torch.log(p) + (n - k + 1) * torch.log1p(-p)
    return 0.5 * (log_mad.exp().sum() / n).item()
