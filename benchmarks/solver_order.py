"""The third-order DPM-Solver++ update's convergence order, with this code's D2 factor and with
the official code's, on the smooth problem of ``tests/test_flow.py``.

    PYTHONPATH=. python3 benchmarks/solver_order.py

Data prediction m(t) = sin(3t), x starting at 0, logSNR-uniform steps on [0.05, 0.95] after two
warm-up steps 1e-4 as long (so the lower-order warm-up does not mask the order of the multistep
update), error against a 20,000-step solve, float64. Prints the error at 80, 160 and 320 steps
and the ratio of each error to the next: ~8 for a third-order method, ~4 for a second-order
one. ``dd.solver.THIRD_ORDER_D2_FACTOR`` is 2 here; the official code's is 1
(docs/flow_matching.md, "DPM-Solver++ order 3: a correction to the official update").
"""

from __future__ import annotations

import argparse
import math
from unittest import mock

import torch

from dd import solver
from dd.solver import dpm_solver_pp, log_snr

STEPS = (80, 160, 320)


def schedule(num_steps: int) -> list[float]:
    lambdas = torch.linspace(log_snr(0.05), log_snr(0.95), num_steps + 1, dtype=torch.float64)
    h = (lambdas[1] - lambdas[0]).item()
    warm_up = [lambdas[0].item() - 2e-4 * h, lambdas[0].item() - 1e-4 * h]
    return torch.sigmoid(torch.tensor(warm_up + lambdas.tolist(), dtype=torch.float64)).tolist()


def data_prediction(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full_like(x, math.sin(3 * t))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    x_start = torch.zeros(1, dtype=torch.float64)
    print("| D2 factor | error at " + " / ".join(map(str, STEPS)) + " steps | ratios |")
    print("|---|---|---|")
    for name, factor in (("this code's", solver.THIRD_ORDER_D2_FACTOR), ("official", 1.0)):
        with mock.patch.object(solver, "THIRD_ORDER_D2_FACTOR", factor):
            reference = dpm_solver_pp(data_prediction, x_start, schedule(20000))
            errors = [
                (dpm_solver_pp(data_prediction, x_start, schedule(n)) - reference).abs().item()
                for n in STEPS
            ]
        ratios = [a / b for a, b in zip(errors[:-1], errors[1:], strict=True)]
        print(
            f"| {name}, {factor:g} | {' / '.join(f'{e:.3e}' for e in errors)} | "
            f"{' and '.join(f'{r:.2f}' for r in ratios)} |"
        )


if __name__ == "__main__":
    main()
