"""Quality of distilled tiny students against their teacher and onestep*, over seeds.

    python benchmarks/eval_students.py --student runs/distill_tiny_llamagen/student --seeds 0 1 2
    python benchmarks/eval_students.py --student A B --grid docs/images  # sample grids too
    python benchmarks/eval_students.py --student llamagen-digits --seeds 100 101 102 \
        --sampling-kappa 2.5 3.0 3.5  # DD rows for each sampling kappa (default: the card's)

For every seed, in one run: the teacher (its own AR sampler, ``tiny_sampling``), onestep*
(independent tokens from the per-class, per-position frequencies of that seed's teacher
samples), DD with 1 step and with 2 steps (``dd.sample``), 100 samples per class. FID in the
digits classifier's features against the train split on the first 36 per class (the protocol
of docs/embedded_default.md); recall (improved precision/recall, k = 3) on the same images in
the same features: the share of the train split covered by the samples, low for a
mode-seeking sampler; class accuracy over all samples. Printed as mean (min..max) with
the gap rule of the stage-2 issue: ``gap = FID(onestep*) - FID(teacher)``. Seconds per image
(sampling and decoding): each method timed in its own pass, one after another per seed, not
alternated round by round, so ratios between rows are rough on a loaded machine
(``dd eval`` and ``benchmarks/timing_rounds.py`` alternate).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import dd
from dd.baselines import ClassTokenTable, independent_token_sampler
from dd.metrics.digits import class_accuracy, default_classifier, frechet_distance
from dd.metrics.generative import precision_recall
from teachers.data import load_digits_split
from teachers.tiny import tiny_sampling
from teachers.tiny.evaluate import (
    balanced_labels,
    first_per_class,
    image_grid,
    sample_teacher,
)

GRID_PER_CLASS = 12
Row = tuple[float, float, float, float]  # FID, class accuracy, seconds per image, recall
DD_BATCH = 250


def dd_images(student, labels: torch.Tensor, steps: int, seed: int) -> tuple[torch.Tensor, float]:
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    images = torch.cat(
        [
            dd.sample(student, labels[i : i + DD_BATCH], steps=steps, generator=generator)
            for i in range(0, len(labels), DD_BATCH)
        ]
    )
    return images, (time.perf_counter() - started) / len(labels)


def evaluate(path: str, args, reference: torch.Tensor) -> dict[str, list[Row]]:
    student = dd.load_student(path)
    teacher = student.teacher
    name = teacher_name(path)
    labels = balanced_labels(teacher.num_classes, args.per_class)
    fid_rows = first_per_class(labels, args.fid_per_class)
    rows: dict[str, list[Row]] = {}

    with torch.no_grad():
        reference_features = default_classifier().features(reference)

    def add(method: str, images: torch.Tensor, seconds: float) -> None:
        fid = frechet_distance(images[fid_rows], reference)
        with torch.no_grad():
            _, recall = precision_recall(
                reference_features, default_classifier().features(images[fid_rows])
            )
        row = (fid, class_accuracy(images, labels), seconds, recall)
        rows.setdefault(method, []).append(row)

    for seed in args.seeds:
        started = time.perf_counter()
        tokens, images = sample_teacher(teacher, labels, tiny_sampling(name), seed=seed)
        add("teacher", images, (time.perf_counter() - started) / len(labels))
        table = ClassTokenTable.of(tokens, labels, teacher.num_classes, teacher.vocab_size)
        independent = independent_token_sampler(table, labels, seed=seed + 1)
        with torch.no_grad():
            add("onestep*", teacher.decode_tokens(independent), float("nan"))
        grids = {"teacher": images}
        for kappa in args.sampling_kappa or [None]:
            tag = "" if kappa is None else f", kappa {kappa:g}"
            if kappa is not None:
                student.sampling_noise_logit_scale = kappa
            for steps in (1, 2):
                images, seconds = dd_images(student, labels, steps, seed)
                add(f"dd {steps}-step{tag}", images, seconds)
                grids.setdefault(f"dd{steps}", images)  # the first kappa's
        if args.grid is not None and seed == args.seeds[0]:
            keep = first_per_class(labels, GRID_PER_CLASS)
            for tag, imgs in grids.items():
                out = Path(args.grid) / f"{name.replace('-', '_')}_student_{tag}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                image_grid(imgs[keep], rows=teacher.num_classes).save(out)
                print(f"wrote {out}")
    return rows


def teacher_name(path: str) -> str:
    from dd.checkpoint import read_card

    return read_card(path)["teacher"]["tiny"]


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if min(values) == max(values):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", nargs="+", required=True, help="student checkpoint folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--fid-per-class", type=int, default=36)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--grid", default=None, help="folder for sample grid PNGs (first seed)")
    parser.add_argument(
        "--sampling-kappa",
        type=float,
        nargs="+",
        default=None,
        help="DD rows for each of these sampling kappas (default: the card's)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reference = load_digits_split("train").images_01()
    print(f"seeds {args.seeds}; FID vs the train split, {args.fid_per_class * 10} images a row")
    print("| teacher | method | FID | recall | class accuracy | ms per image | within gap rule |")
    print("|---|---|---|---|---|---|---|")
    for path in args.student:
        rows = evaluate(path, args, reference)
        teacher_fid = statistics.fmean(row[0] for row in rows["teacher"])
        gap = statistics.fmean(row[0] for row in rows["onestep*"]) - teacher_fid
        bounds = {"dd 1-step": 0.25, "dd 2-step": 0.15}
        for method, values in rows.items():
            bound = bounds.get(method.split(",")[0])
            fids = [row[0] for row in values]
            accuracy = spread([100 * row[1] for row in values], 1)
            ms = statistics.fmean(1000 * row[2] for row in values)
            recall = spread([100 * row[3] for row in values], 1)
            rule = ""
            if bound is not None:
                limit = teacher_fid + bound * gap
                rule = f"{'yes' if statistics.fmean(fids) <= limit else 'no'} (<= {limit:.2f})"
            print(
                f"| {teacher_name(path)} | {method} | {spread(fids, 2)} | {recall}% | "
                f"{accuracy}% | {ms:.2f} | {rule} |"
            )


if __name__ == "__main__":
    main()
