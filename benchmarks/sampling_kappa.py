"""DD samples of a shipped (or saved) student against the sampling noise-logit kappa.

    python3 benchmarks/sampling_kappa.py --student llamagen-digits --seed 100 --multiples 1 1.25 1.5

For each multiple of the student's learned kappa: ``dd.sample`` with that kappa as
``sampling_noise_logit_scale``, 1 and 2 steps, ``--per-class`` samples per class; FID on the
first 36 per class against the digits train split, recall (improved P/R, k = 3) on the same
images in the digits classifier's features, class accuracy on all of them
(docs/distillation.md, "Sampling kappa").
"""

from __future__ import annotations

import argparse

import torch

import dd
from dd.metrics.digits import class_accuracy, default_classifier, frechet_distance
from dd.metrics.generative import precision_recall
from teachers.data import load_digits_split
from teachers.tiny.evaluate import balanced_labels, first_per_class

FID_PER_CLASS = 36


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="shipped name or checkpoint folder")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.0, 1.25, 1.5])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    student = dd.load_student(args.student)
    learned = float(student.noise_logit_scale.detach())
    reference = load_digits_split("train").images_01()
    labels = balanced_labels(student.num_classes, args.per_class)
    rows = first_per_class(labels, FID_PER_CLASS)
    with torch.no_grad():
        reference_features = default_classifier().features(reference)
    print(f"{args.student}: learned kappa {learned:.3f}, seed {args.seed}")
    print("| multiple | kappa | steps | FID | recall | class accuracy |")
    print("|---|---|---|---|---|---|")
    for multiple in args.multiples:
        student.sampling_noise_logit_scale = multiple * learned
        for steps in (1, 2):
            generator = torch.Generator().manual_seed(args.seed)
            images = dd.sample(student, labels, steps=steps, generator=generator)
            with torch.no_grad():
                features = default_classifier().features(images[rows])
            _, recall = precision_recall(reference_features, features)
            print(
                f"| {multiple:g} | {multiple * learned:.2f} | {steps} | "
                f"{frechet_distance(images[rows], reference):.2f} | {100 * recall:.1f}% | "
                f"{100 * class_accuracy(images, labels):.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
