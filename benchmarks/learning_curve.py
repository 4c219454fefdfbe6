"""A distillation run's learning curve from its step checkpoints (EMA weights).

    python3 benchmarks/learning_curve.py --run runs/distill_tiny_llamagen --every 500 \
        --plot docs/images/learning_curve_llamagen_digits.png
    python3 benchmarks/learning_curve.py --run runs/a runs/b ...   # several runs, one plot

For every kept checkpoint ``<run>/checkpoints/epoch=*-step=S.ckpt`` (every ``--every`` steps):
the EMA student (Lightning's ``EMAWeightAveraging`` stores the averaged weights as the
checkpoint's ``state_dict``) is evaluated on

- held-out token agreement with the teacher's tokens at every training timestep (the run's
  last ``pairs.num_heldout`` pairs, as ``val/token_agreement_step<k>`` in training), and
- DD 1-step and 2-step FID and class accuracy (``--per-class`` samples per class, FID on the
  first 36 per class against the digits train split, as ``benchmarks/eval_students.py``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import yaml

import dd
from dd.config import recipe_from_dict
from dd.data import load_pairs, split_heldout
from dd.metrics.digits import class_accuracy, frechet_distance
from dd.sampling import choose_tokens
from dd.student import DDStudent
from dd.teacher_spec import load_teacher
from dd.train_command import load_checkpoint_student
from dd.train_recipe import TrainRecipe
from dd.trajectory import trajectory_input
from teachers.data import load_digits_split
from teachers.tiny.evaluate import balanced_labels, first_per_class

FID_PER_CLASS = 36
SAMPLE_BATCH = 250


def step_checkpoints(run: Path, every: int) -> list[tuple[int, Path]]:
    found = []
    for path in (run / "checkpoints").glob("epoch=*-step=*.ckpt"):
        step = int(re.search(r"step=(\d+)", path.name).group(1))
        if step % every == 0:
            found.append((step, path))
    return sorted(found)


def ema_student(
    recipe: TrainRecipe,
    teacher,
    checkpoint: Path,
    split_token: int | None = None,
    sampling_kappa: float | None = None,
) -> DDStudent:
    student = DDStudent(
        teacher,
        recipe.student.timesteps,
        recipe.student.split_token if split_token is None else split_token,
        noise_logit_scale=recipe.student.noise_logit_scale,
        sampling_noise_logit_scale=(
            recipe.student.sampling_noise_logit_scale if sampling_kappa is None else sampling_kappa
        ),
        backbone_options=recipe.student.backbone_options,
    )
    load_checkpoint_student(student, checkpoint)
    return student.eval()


@torch.no_grad()
def token_agreement(student: DDStudent, heldout) -> dict[int, float]:
    codebook = student.teacher.codebook
    result = {}
    for step in student.timesteps:
        start = student.geometry.step_ranges[step][0]
        boundary = torch.full((len(heldout),), start)
        inputs = trajectory_input(heldout.noise.float(), heldout.tokens, codebook, boundary)
        logits, embeddings = student(heldout.labels, inputs, boundary, heldout.tokens)
        predicted = choose_tokens(student, logits, embeddings)
        result[step] = float((predicted[:, start:] == heldout.tokens[:, start:]).float().mean())
    return result


@torch.no_grad()
def quality(student: DDStudent, steps: int, per_class: int, reference: torch.Tensor, seed: int):
    labels = balanced_labels(student.num_classes, per_class)
    generator = torch.Generator().manual_seed(seed)
    images = torch.cat(
        [
            dd.sample(student, labels[i : i + SAMPLE_BATCH], steps=steps, generator=generator)
            for i in range(0, len(labels), SAMPLE_BATCH)
        ]
    )
    fid = frechet_distance(images[first_per_class(labels, FID_PER_CLASS)], reference)
    return fid, class_accuracy(images, labels)


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    """FID (1-step solid, 2-step dashed) and held-out agreement at t=0 against steps, one
    colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for index, (label, rows) in enumerate(curves.items()):
        colour, steps = f"C{index}", [r["step"] for r in rows]
        left.plot(
            steps, [r["fid_1step"] for r in rows], "o-", color=colour, label=f"{label}, 1 step"
        )
        left.plot(
            steps, [r["fid_2step"] for r in rows], "s--", color=colour, label=f"{label}, 2 steps"
        )
        right.plot(
            steps, [100 * r["agreement_step0"] for r in rows], "o-", color=colour, label=label
        )
    left.set(xlabel="training steps", ylabel="FID (digits features)", yscale="log")
    right.set(xlabel="training steps", ylabel="held-out token agreement, t=0 (%)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def curve(run: Path, args, reference: torch.Tensor) -> tuple[str, list[dict]]:
    """(label naming the run and its training pairs, one row per kept checkpoint)."""
    recipe = recipe_from_dict(TrainRecipe, yaml.safe_load((run / "recipe.yaml").read_text()))
    teacher = load_teacher(recipe.teacher)
    pairs = load_pairs(recipe.pairs.folder, teacher_fingerprint=teacher.fingerprint())
    train, heldout = split_heldout(pairs, recipe.pairs.num_heldout, recipe.pairs.num_train)
    rows = []
    for step, path in step_checkpoints(run, args.every):
        student = ema_student(recipe, teacher, path, args.split_token, args.sampling_kappa)
        row = {"step": args.steps_before + step}
        for timestep, value in token_agreement(student, heldout).items():
            row[f"agreement_step{timestep}"] = value
        for steps in (1, 2):
            fid, accuracy = quality(student, steps, args.per_class, reference, args.seed)
            row[f"fid_{steps}step"], row[f"accuracy_{steps}step"] = fid, accuracy
        rows.append(row)
        cells = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        print(f"{run.name} ({len(train)} pairs) | " + " | ".join(cells), flush=True)
    return f"{run.name} ({len(train):,} pairs)", rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", required=True, help="runs' output folders")
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="PNG of both curves")
    parser.add_argument(
        "--sampling-kappa",
        type=float,
        default=None,
        help="sampling noise-logit kappa (default: the recipe's sampling_noise_logit_scale)",
    )
    parser.add_argument(
        "--steps-before",
        type=int,
        default=0,
        help="steps of the student the run started from (student.init_from), added to the axis",
    )
    parser.add_argument(
        "--split-token", type=int, default=None, help="sampling split (default: the recipe's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = load_digits_split("train").images_01()
    curves = dict(curve(Path(run), args, reference) for run in args.run)
    if args.plot and any(curves.values()):
        plot(
            {k: v for k, v in curves.items() if v},
            Path(args.plot),
            f"EMA students, seed {args.seed}",
        )


if __name__ == "__main__":
    main()
