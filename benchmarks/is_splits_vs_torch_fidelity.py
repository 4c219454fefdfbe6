"""Inception Score of ``dd.metrics.generative.inception_score`` against torch-fidelity's
(``isc_features_to_metric``) on the same logits, for sample counts the split count divides and
does not divide.

    PYTHONPATH=. python3 benchmarks/is_splits_vs_torch_fidelity.py --samples 1000 1003 \
        --splits 10 --seeds 0 1 2 3 4

Both shuffle the rows with the same permutation (``RandomState(2020)``). They cut them
differently: ``np.array_split`` (sizes within one of each other) here, ``i * N // splits``
there. Those are the same parts when ``splits`` divides ``N``, so the scores agree to
rounding; otherwise a few rows fall in another split and the scores differ slightly. The
logits are random, 1008 classes as Inception's, with a class structure (a bias on one logit
cycling over 7 levels) so that the score is well above 1; one set per seed (the size of the
difference depends on the logits). Seeded: the same figures every run.
"""

from __future__ import annotations

import argparse

import torch
from torch_fidelity.metric_isc import isc_features_to_metric

from dd.metrics.generative import inception_score

CLASSES = 1008


def logits_of(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(count, CLASSES, generator=generator, dtype=torch.float64)
    logits[:, 0] += torch.arange(count) % 7
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 1003])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    print("| N | splits | seed | dd | torch-fidelity | relative difference |")
    print("|---|---|---|---|---|---|")
    for count in args.samples:
        for seed in args.seeds:
            logits = logits_of(count, seed)
            ours = inception_score(logits, args.splits)
            metric = isc_features_to_metric(logits, splits=args.splits)
            theirs = float(metric["inception_score_mean"])
            difference = abs(ours - theirs) / theirs
            print(
                f"| {count} | {args.splits} | {seed} | {ours:.4f} | {theirs:.4f} | "
                f"{difference:.1e} |"
            )


if __name__ == "__main__":
    main()
