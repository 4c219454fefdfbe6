"""Time schedules and the multistep DPM-Solver++ for the AR flow-matching ODE.

The flow of DD (DD paper Sec. 3.2) is `x_t = (1 - t) x_0 + t c`: t = 0 is noise, t = 1 is
data. In DPM-Solver notation `x_t = alpha_t m + sigma_t eps` with `alpha_t = t`,
`sigma_t = 1 - t` and log signal-to-noise ratio `lambda_t = log(alpha_t / sigma_t)`
(DD paper Appendix C). The solver works in the data-prediction form (DPM-Solver++, Lu et al.
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

# The D2 term of the order-3 update (multistep_coefficients): 2 from the exact integral; the
# official DPM-Solver code uses 1, which makes the update order 2 (tests/test_flow.py).
THIRD_ORDER_D2_FACTOR = 2.0

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
        lambdas = torch.linspace(
            log_snr(t_start), log_snr(t_end), num_steps + 1, dtype=torch.float64
        )
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
    the official multistep solver: the first step is order 1, the second order 2.
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
        earlier_h = [lambdas[step - i] - lambdas[step - i - 1] for i in range(step_order - 1)]
        coefficients = multistep_coefficients(h, earlier_h, alpha_next=t_next)
        # x' = (sigma'/sigma) x + sum_i k_i m_i: the update is linear in the history, so it
        # is applied as one scaled copy and one fused add per prediction (few small ops per
        # step: the map runs once per AR step, where per-op overhead dominates at small V).
        x_next = torch.mul(x, (1.0 - t_next) / (1.0 - t_cur))
        for coefficient, prediction in zip(coefficients, history, strict=True):
            x_next.add_(prediction, alpha=coefficient)
        x = x_next
    return x


def multistep_coefficients(h: float, earlier_h: list[float], *, alpha_next: float) -> list[float]:
    """Weights k_i of the data predictions m_0 (newest), m_1, m_2 in one DPM-Solver++ step.

    `h` is this step's lambda increment, `earlier_h` the increments of the previous steps
    (newest first); their count + 1 is the step's order. Expanding the multistep updates of
    DPM-Solver++ (Lu et al. 2022; the official code's ``multistep_dpm_solver_*_update``):
    - order 1: x' = (sigma'/sigma) x - alpha' phi1 m0
    - order 2: ... - 0.5 alpha' phi1 D1, D1 = (m0 - m1) / r0, r0 = h0 / h
    - order 3: ... + alpha' phi2 D1 - 2 alpha' phi3 D2 with D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),
      D2 = (D1_0 - D1_1) / (r0 + r1), D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1.
    D1 ~ h m' and D2 ~ h^2 m''/2 (Taylor in lambda about the current point). The exact
    integral of the m'' u^2/2 term is alpha' m'' int_0^h e^{-(h-u)} u^2/2 du
    = -alpha' phi3 h^2 m'' = -2 alpha' phi3 D2 (``THIRD_ORDER_D2_FACTOR``). The official code
    writes -alpha' phi3 D2, half of that: ``tests/test_flow.py`` measures global order 2 for it
    and order 3 for this form (error / 4 and / 8 per halving of h).
    """
    phi1 = math.expm1(-h)
    if not earlier_h:
        return [-alpha_next * phi1]
    r0 = earlier_h[0] / h
    d1_0 = [1.0 / r0, -1.0 / r0, 0.0]  # D1_0 as weights of (m0, m1, m2)
    if len(earlier_h) == 1:
        return [
            -0.5 * alpha_next * phi1 * w - (alpha_next * phi1 if i == 0 else 0.0)
            for i, w in enumerate(d1_0[:2])
        ]
    if len(earlier_h) != 2:
        raise ValueError(f"order must be 1, 2 or 3, got {len(earlier_h) + 1}")
    r1 = earlier_h[1] / h
    d1_1 = [0.0, 1.0 / r1, -1.0 / r1]
    ratio = r0 / (r0 + r1)
    d1 = [a + ratio * (a - b) for a, b in zip(d1_0, d1_1, strict=True)]
    d2 = [(a - b) / (r0 + r1) for a, b in zip(d1_0, d1_1, strict=True)]
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    weights = [
        alpha_next * phi2 * a - THIRD_ORDER_D2_FACTOR * alpha_next * phi3 * b
        for a, b in zip(d1, d2, strict=True)
    ]
    weights[0] -= alpha_next * phi1
    return weights
