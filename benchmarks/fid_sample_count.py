"""How FID depends on the number of samples alone: the first N held-out digits against the
train split, in the digits space ``dd eval`` scores the tiny teachers in (64-d features;
``dd.metrics.spaces.DigitsSpace``, ``dd.metrics.generative.frechet_distance``).

    PYTHONPATH=. python3 benchmarks/fid_sample_count.py --samples 360 200 64 30 10

The images are real digits throughout, so every rise of the FID as N falls is the estimator's
small-sample bias; at N <= 64 (the feature dimension) the samples' covariance is singular.
``dd eval`` warns at that point (docs/evaluation.md, ``fid_per_class``). Deterministic: no
randomness is drawn.
"""

from __future__ import annotations

import argparse

from dd.evaluate import Reference
from dd.metrics.generative import FeatureStats, frechet_distance
from dd.metrics.spaces import DigitsSpace
from teachers.data import load_digits_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[360, 200, 64, 30, 10])
    args = parser.parse_args()
    heldout = load_digits_split("heldout").images_01()
    if max(args.samples) > heldout.shape[0] or min(args.samples) < 2:
        parser.error(f"--samples must be in [2, {heldout.shape[0]}] (the held-out digits)")
    space = DigitsSpace()
    reference = Reference.from_images(space, load_digits_split("train").images_01())
    features, _ = space.embed(heldout)
    print(f"first N of {heldout.shape[0]} held-out digits against the train split, {space.name}")
    print("| samples N | FID |\n|---|---|")
    for count in args.samples:
        fid = frechet_distance(FeatureStats.of(features[:count]), reference.stats)
        print(f"| {count} | {fid:.2f} |")


if __name__ == "__main__":
    main()
