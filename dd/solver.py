"""Time schedules and the multistep DPM-Solver++ for the AR flow-matching ODE.

The flow of DD (FACTS.md section 1) is `x_t = (1 - t) x_0 + t c`: t = 0 is noise, t = 1 is
data. In DPM-Solver notation `x_t = alpha_t m + sigma_t eps` with `alpha_t = t`,
`sigma_t = 1 - t` and log signal-to-noise ratio `lambda_t = log(alpha_t / sigma_t)`
(FACTS.md section 5). The solver works in the data-prediction form (DPM-Solver++, Lu et al.
2022, Algorithm 2): it integrates the ODE exactly in its linear part and approximates the
data prediction `m(x, t)` by a polynomial in lambda through the last 1-3 evaluations.

Pure functions: the schedule is computed separately and passed in; the solver holds no state
beyond one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

Spacing = Literal["logsnr", "time"]
SPACINGS: tuple[str, ...] = ("logsnr", "time")
MAX_SOLVER_ORDER = 3

DataPrediction = Callable[[torch.Tensor, float], torch.Tensor]


def log_snr(t: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) = log(t / (1 - t)) for this flow."""
    return math.log(t) - math.log1p(-t)


def time_schedule(
    num_steps: int, *, spacing: Spacing = "logsnr", t_start: float, t_end: float
) -> list[float]:
    """`num_steps + 1` increasing times from `t_start` to `t_end`, both inside (0, 1).

    "logsnr": uniform in lambda (recommended by DPM-Solver for low-dimensional data; it puts
    many steps near both ends, where the posterior weights change fastest). "time": uniform
    in t. Times are Python floats (float64) so every token sees bit-identical times.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < t_start < t_end < 1.0:
        raise ValueError(f"need 0 < t_start < t_end < 1, got t_start={t_start}, t_end={t_end}")
    if spacing == "logsnr":
        lambdas = torch.linspace(log_snr(t_start), log_snr(t_end), num_steps + 1,
                                 dtype=torch.float64)
        times = torch.sigmoid(lambdas)  # t = alpha = sigmoid(lambda)
    elif spacing == "time":
        times = torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float64)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    times_list = times.tolist()
    times_list[0], times_list[-1] = t_start, t_end  # exact ends despite sigmoid round-off
    return times_list


def dpm_solver_pp(
    data_prediction: DataPrediction, x: torch.Tensor, times: list[float], *, order: int = 3
) -> torch.Tensor:
    """Integrate from `times[0]` to `times[-1]` with multistep DPM-Solver++ of `order` 1-3.

    `data_prediction(x, t)` returns m(x, t), the posterior mean of the data. One evaluation
    per step (the last time is never evaluated), so NFE = len(times) - 1. Warm-up as in
    FACTS.md section 5: the first step is order 1, the second order 2.
    """
    if order not in range(1, MAX_SOLVER_ORDER + 1):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    lambdas = [log_snr(t) for t in times]
    history: list[torch.Tensor] = []  # data predictions, newest first
    for step in range(len(times) - 1):
        t_cur, t_next = times[step], times[step + 1]
        history.insert(0, data_prediction(x, t_cur))
        del history[order:]
        step_order = min(order, step + 1)
        h = lambdas[step + 1] - lambdas[step]
        phi1 = math.expm1(-h)
        sigma_ratio = (1.0 - t_next) / (1.0 - t_cur)
        alpha_next = t_next
        m0 = history[0]
        # Order 1 (DDIM in data-prediction form): x' = (sigma'/sigma) x - alpha' phi1 m0.
        x_next = sigma_ratio * x - (alpha_next * phi1) * m0
        if step_order == 2:
            r0 = (lambdas[step] - lambdas[step - 1]) / h
            d1 = (m0 - history[1]) / r0
            x_next = x_next - (0.5 * alpha_next * phi1) * d1
        elif step_order == 3:
            r0 = (lambdas[step] - lambdas[step - 1]) / h
            r1 = (lambdas[step - 1] - lambdas[step - 2]) / h
            d1_0 = (m0 - history[1]) / r0
            d1_1 = (history[1] - history[2]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            # d1 ~ h m' and d2 ~ h^2 m''/2 (Taylor in lambda about the current point). The exact
            # integral of the m'' u^2/2 term is alpha' m'' int_0^h e^{-(h-u)} u^2/2 du
            # = -alpha' phi3 h^2 m'' = -2 alpha' phi3 d2. FACTS.md section 5 writes
            # -alpha' phi3 D2, half of that: tests/test_flow.py measures global order 2 for it
            # and order 3 for this form (error / 8 per halving of h).
            x_next = x_next + (alpha_next * phi2) * d1 - (2.0 * alpha_next * phi3) * d2
        x = x_next
    return x
