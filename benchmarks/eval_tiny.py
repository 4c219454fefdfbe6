"""Evaluate the shipped tiny teachers on the digits domain and print the table.

    python benchmarks/eval_tiny.py                          # both teachers, as in the docs
    python benchmarks/eval_tiny.py --teachers llamagen-digits --cfg 1.5 --grid docs/images
    python benchmarks/eval_tiny.py --seeds 0 1 2               # mean and spread over seeds
    python benchmarks/eval_tiny.py --reference heldout         # FID against the 360 held-out

Rows, all judged by the digits classifier (dd/metrics/digits.py): class accuracy and FID in
its 64-dim penultimate feature space against a reference split (``--reference``: the train
split, 1,437 images, by default; or the 360 held-out images):

- real images of the other split (360): the floor FID of a perfect generator at this sample
  size (with ``--reference heldout``: the first 36 per class of the train split);
- tokenizer reconstructions of those images: the best the teacher's tokens allow;
- the teacher, sampled with its own AR sampler (``teachers.sampling.sample_tokens`` over its
  session) with ``teachers.tiny.tiny_sampling(name)`` (``--sampling family``: the family's
  default, the DD paper's setting; ``--cfg`` overrides the scale);
- ``onestep*``: every token drawn independently from the per-class, per-position frequencies
  of the teacher's own samples (the DD paper's reference for a model without dependencies).

FID uses the same number of images for every row (``--fid-per-class`` x 10 = 360, the size of
the held-out split), since FID's bias depends on it; accuracy uses every generated sample.
With several ``--seeds`` the sampled rows (teacher, onestep*) are repeated per seed and printed
as mean and spread (min..max).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from dd.baselines import ClassTokenTable, independent_token_sampler
from dd.metrics.digits import class_accuracy, frechet_distance
from teachers.data import load_digits_split
from teachers.protocol import SamplingConfig
from teachers.tiny import load_tiny_teacher, tiny_sampling
from teachers.tiny.evaluate import (
    balanced_labels,
    first_per_class,
    image_grid,
    sample_teacher,
)

GRID_PER_CLASS = 12


def reconstruct(teacher, images_m11: torch.Tensor) -> torch.Tensor:
    """Tokenizer round trip of images in ``[-1, 1]`` -> images in ``[0, 1]``."""
    with torch.no_grad():
        if teacher.family == "llamagen":
            tokens = teacher.vq.encode(images_m11)[1]
        else:
            tokens = teacher.vae.encode_indices(images_m11)
        return teacher.decode_tokens(tokens)


def evaluate(name: str, args: argparse.Namespace, seed: int, reference_set, other) -> list[tuple]:
    """Rows of one teacher and one seed; ``other`` is the real split that is not the reference."""
    teacher = load_tiny_teacher(name, weights_dir=args.weights_dir)
    sampling = tiny_sampling(name) if args.sampling == "tiny" else teacher.default_sampling()
    if args.cfg is not None:
        sampling = dataclasses.replace(sampling, cfg_scale=args.cfg)
    reference = reference_set.images_01()
    rows = []

    start = time.perf_counter()
    labels = balanced_labels(teacher.num_classes, args.per_class)
    tokens, images = sample_teacher(teacher, labels, sampling, seed=seed, progress=True)
    sample_seconds = time.perf_counter() - start
    fid_idx = first_per_class(labels, args.fid_per_class)

    recon = reconstruct(teacher, other.images)
    rows.append(
        (
            name,
            f"tokenizer reconstruction of {other.name}",
            class_accuracy(recon, other.labels),
            frechet_distance(recon, reference),
            len(other.labels),
        )
    )
    rows.append(
        (
            name,
            f"teacher, {describe(sampling)}",
            class_accuracy(images, labels),
            frechet_distance(images[fid_idx], reference),
            len(labels),
        )
    )
    vocab_size = teacher.codebook.shape[0]
    table = ClassTokenTable.of(tokens, labels, teacher.num_classes, vocab_size)
    independent = independent_token_sampler(table, labels, seed=seed + 1)
    with torch.no_grad():
        independent_images = teacher.decode_tokens(independent)
    rows.append(
        (
            name,
            "onestep* (independent tokens, teacher's frequencies)",
            class_accuracy(independent_images, labels),
            frechet_distance(independent_images[fid_idx], reference),
            len(labels),
        )
    )
    print(
        f"{name}: sampled {len(labels)} images in {sample_seconds:.1f} s "
        f"({teacher.geometry.num_steps} AR steps, {teacher.geometry.num_tokens} tokens)"
    )
    if args.grid is not None and seed == args.seeds[0]:
        grid_idx = first_per_class(labels, GRID_PER_CLASS)
        for tag, imgs in (("samples", images), ("onestep", independent_images)):
            path = Path(args.grid) / f"{name.replace('-', '_')}_{tag}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image_grid(imgs[grid_idx], rows=teacher.num_classes).save(path)
            print(f"wrote {path}")
    return rows


def describe(sampling: SamplingConfig) -> str:
    parts = [f"cfg {sampling.cfg_scale:g} {sampling.cfg_schedule}"]
    if sampling.top_k:
        parts.append(f"top-k {sampling.top_k}")
    if sampling.top_p < 1:
        parts.append(f"top-p {sampling.top_p:g}")
    if sampling.temperature != 1:
        parts.append(f"temperature {sampling.temperature:g}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teachers",
        nargs="+",
        choices=("llamagen-digits", "var-digits"),
        default=["llamagen-digits", "var-digits"],
        help="codebook teachers (far-digits' rows: benchmarks/eval_far_student.py)",
    )
    parser.add_argument("--per-class", type=int, default=100, help="teacher samples per class")
    parser.add_argument("--fid-per-class", type=int, default=36, help="images per class in FID")
    parser.add_argument(
        "--sampling",
        choices=("tiny", "family"),
        default="tiny",
        help="tiny: teachers.tiny.TINY_SAMPLING; family: teacher.default_sampling() (paper)",
    )
    parser.add_argument("--cfg", type=float, default=None, help="override the CFG scale")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds")
    parser.add_argument(
        "--reference",
        choices=("train", "heldout"),
        default="train",
        help="real split FID is measured against (the other split gives the floor row)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--grid", default=None, help="folder for sample grid PNGs")
    parser.add_argument("--weights-dir", default=None, help="default: the shipped weights")
    args = parser.parse_args()
    if not 1 <= args.fid_per_class <= args.per_class:
        # Fewer would put fewer images in the sampled rows' FID than in the floor row's, and
        # FID's bias depends on the count.
        parser.error(
            f"--fid-per-class {args.fid_per_class} must be between 1 and --per-class "
            f"{args.per_class}"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    splits = {"train": load_digits_split("train"), "heldout": load_digits_split("heldout")}
    reference_set = splits[args.reference]
    other_name = "heldout" if args.reference == "train" else "train"
    # The same count in every FID row: 36 per class of the non-reference split.
    other_all = splits[other_name]
    fewest = int(torch.bincount(other_all.labels).min())
    if args.fid_per_class > fewest:
        parser.error(
            f"--fid-per-class {args.fid_per_class}: the {other_name} split's floor row has at "
            f"most {fewest} images per class"
        )
    keep = first_per_class(other_all.labels, args.fid_per_class)
    other = RealImages(other_name, other_all.images[keep], other_all.labels[keep])
    floor = (
        "-",
        f"real {other_name} images (floor)",
        class_accuracy(other.images_01(), other.labels),
        frechet_distance(other.images_01(), reference_set.images_01()),
        len(other.labels),
    )
    per_seed = [[floor]]
    for seed in args.seeds:
        rows = []
        for name in args.teachers:
            rows.extend(evaluate(name, args, seed, reference_set, other))
        per_seed.append(rows)
    print()
    print(f"FID against the {args.reference} split; seeds {args.seeds}")
    print("| teacher | images | class accuracy | FID (digits features) | n |")
    print("|---|---|---|---|---|")
    for name, what, accuracies, fids, count in merge_seeds(per_seed):
        accuracy, fid = spread(accuracies, 100, 1), spread(fids, 1, 2)
        print(f"| {name} | {what} | {accuracy}% | {fid} | {count} |")


@dataclasses.dataclass(frozen=True)
class RealImages:
    """A subset of a real digits split (images in ``[-1, 1]``)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    def images_01(self) -> torch.Tensor:
        return (self.images + 1) / 2


def merge_seeds(per_seed: list[list[tuple]]) -> list[tuple]:
    """Rows with the same (teacher, images) across seeds -> (name, what, [acc], [fid], n)."""
    merged: dict[tuple[str, str], tuple[list, list, int]] = {}
    for rows in per_seed:
        for name, what, accuracy, fid, count in rows:
            accuracies, fids, _ = merged.setdefault((name, what), ([], [], count))
            accuracies.append(accuracy)
            fids.append(fid)
    return [(name, what, acc, fid, count) for (name, what), (acc, fid, count) in merged.items()]


def spread(values: list[float], scale: float, digits: int) -> str:
    """``mean (min..max)`` over seeds; the mean alone when every value is the same."""
    scaled = [scale * value for value in values]
    mean = f"{statistics.fmean(scaled):.{digits}f}"
    if min(scaled) == max(scaled):  # one seed, or a row that does not depend on the seed
        return mean
    return f"{mean} ({min(scaled):.{digits}f}..{max(scaled):.{digits}f})"


if __name__ == "__main__":
    main()
