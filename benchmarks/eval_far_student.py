"""DD over the continuous-token FAR teacher: quality and speed against the teacher and onestep*.

    python benchmarks/eval_far_student.py --student far-digits --pairs pairs/tiny_far --threads 1

For every seed, in one run, ``--per-class`` samples per class (100: 1,000 a seed):

- teacher: the FAR teacher's own AR sampler (``teachers.far.sample_continuous_tokens``) with
  the settings ``--pairs`` was made with (the shipped pairs: 8 head steps per token, CFG 2),
  Gaussian noise from the seed;
- onestep*: every position of a class-``c`` sample drawn independently from the set of the
  teacher's tokens at that position over the class-``c`` pairs of ``--pairs`` (DD's onestep*
  for continuous tokens, ``dd.continuous_sampling.independent_token_sampler``);
- DD 1-step and 2-step: ``dd.sample(student, labels, steps=..., generator=seed)``.

FID in the digits classifier's features against the train split on the first
``--fid-per-class`` of every class (the protocol of ``benchmarks/eval_students.py``); class
accuracy over all samples; within-class spread (mean over classes of the RMS distance of the
FID subset's classifier features to their class mean: diversity, which FID alone can hide);
seconds per image = wall time of sampling + decoding / images (1 thread recommended; each
method timed in its own pass, one after another per seed, not alternated round by round, so
ratios between rows are rough on a loaded machine). Printed
as mean (min..max) over the seeds, with the gap rule of the stage-2 issue:
``gap = FID(onestep*) - FID(teacher)``, DD 1-step <= teacher + 0.25 gap, 2-step + 0.15 gap.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import machine_description

import dd
from dd.continuous_sampling import independent_token_sampler
from dd.data import load_pairs, pair_sampling
from dd.metrics.digits import class_accuracy, default_classifier, frechet_distance
from teachers.data import load_digits_split
from teachers.far import sample_continuous_tokens
from teachers.tiny.evaluate import balanced_labels, first_per_class

BATCH = 250
GAP_BOUNDS = {"dd 1-step": 0.25, "dd 2-step": 0.15}  # the stage-2 issue's rule
Row = dict[str, float]


def timed_batches(make_images, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """``make_images(labels_batch, generator)`` over batches of ``BATCH``, one generator seeded
    with ``seed``; returns the images and the wall seconds per image."""
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    with torch.no_grad():
        images = torch.cat([make_images(batch, generator) for batch in labels.split(BATCH)])
    return images, (time.perf_counter() - started) / len(labels)


def within_class_spread(images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        features = default_classifier().features(images)
    spreads = []
    for c in labels.unique():
        f = features[labels == c]
        spreads.append(float((f - f.mean(0)).square().sum(1).mean().sqrt()))
    return statistics.fmean(spreads)


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="far-digits", help="shipped name or folder")
    parser.add_argument("--pairs", default="pairs/tiny_far", help="the teacher's pair folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--fid-per-class", type=int, default=36)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not Path(args.pairs).is_dir():
        parser.error(
            f"no pair folder at {args.pairs} (onestep* and the teacher's settings come from it): "
            "make the shipped student's with `dd generate --recipe recipes/generate_tiny_far.yaml "
            "--pairs.num_pairs 10000`, or pass --pairs"
        )
    torch.set_num_threads(args.threads)

    student = dd.load_student(args.student)
    teacher = student.teacher
    pairs = load_pairs(args.pairs, teacher_fingerprint=teacher.fingerprint())
    sampling = pair_sampling(args.pairs, continuous=True)  # the teacher the student learnt
    teacher_row = f"teacher ({sampling.head_steps} head steps)"
    reference = load_digits_split("train").images_01()
    labels = balanced_labels(teacher.num_classes, args.per_class)
    fid_rows = first_per_class(labels, args.fid_per_class)
    rows: dict[str, list[Row]] = {}

    def add(method: str, images: torch.Tensor, seconds: float) -> None:
        rows.setdefault(method, []).append(
            {
                "fid": frechet_distance(images[fid_rows], reference),
                "accuracy": class_accuracy(images, labels),
                "spread": within_class_spread(images[fid_rows], labels[fid_rows]),
                "ms": 1000 * seconds,
            }
        )

    def teacher_images(batch, generator):
        tokens = sample_continuous_tokens(teacher, batch, sampling, generator=generator)
        return teacher.decode_tokens(tokens)

    def onestep_images(batch, generator):
        tokens = independent_token_sampler(pairs.tokens, pairs.labels, batch, generator=generator)
        return teacher.decode_tokens(tokens)

    for seed in args.seeds:
        add(teacher_row, *timed_batches(teacher_images, labels, seed))
        add("onestep*", *timed_batches(onestep_images, labels, seed))
        for steps in (1, 2):
            images = timed_batches(
                lambda b, g, s=steps: dd.sample(student, b, steps=s, generator=g), labels, seed
            )
            add(f"dd {steps}-step", *images)

    print(
        f"{machine_description(torch.get_num_threads())}; student {args.student}; seeds "
        f"{args.seeds}; {len(labels)} samples a seed; FID on {len(fid_rows)} vs the train split; "
        f"onestep* from the {len(pairs)} pairs of {args.pairs}"
    )
    teacher_fid = statistics.fmean(r["fid"] for r in rows[teacher_row])
    gap = statistics.fmean(r["fid"] for r in rows["onestep*"]) - teacher_fid
    print("| method | FID | class accuracy | within-class spread | ms per image | gap rule |")
    print("|---|---|---|---|---|---|")
    for method, values in rows.items():
        fids = [r["fid"] for r in values]
        rule = ""
        if method in GAP_BOUNDS:
            limit = teacher_fid + GAP_BOUNDS[method] * gap
            rule = f"{'met' if statistics.fmean(fids) <= limit else 'not met'} (<= {limit:.2f})"
        print(
            f"| {method} | {spread(fids, 2)} | "
            f"{spread([100 * r['accuracy'] for r in values], 1)}% | "
            f"{spread([r['spread'] for r in values], 2)} | "
            f"{spread([r['ms'] for r in values], 2)} | {rule} |"
        )
    print(f"gap = FID(onestep*) - FID(teacher) = {gap:.2f}")


if __name__ == "__main__":
    main()
