"""``dd demo --output DIR [--quick]``: the whole method on the tiny teachers, on a CPU.

For each tiny teacher (``llamagen-digits``, ``var-digits``, and the continuous-token
``far-digits``, family ``far``: teacher, DD 1-/2-step and onestep* only):

1. pairs: ``dd generate``'s engine (``data_gen.engine.run_generation``) with the teacher's
   tiny generation recipe (``recipes/generate_tiny_*.yaml``), fewer pairs;
2. distil: ``dd train``'s module (``dd.train_command.train``) with the tiny distillation recipe
   (``recipes/distill_tiny_*.yaml``), fewer steps;
3. sample: one labelled grid, every method on the same labels and per-sample seeds;
4. evaluate: ``dd.evaluate`` in the digits classifier's space against the train split.

Writes ``report.json`` (schema of the stage-3 issue, and the run's preset, seed and settings),
``report.md``, ``grids/<teacher>.png`` and ``quality_vs_steps.png``, after removing the previous
run's (``remove_previous_reports``). Settings: the recipes, overridden by ``DemoSettings``
(``DEMO_PRESETS``: ``default`` and ``quick``; the numbers live only there). Rerunning the same
command reuses the finished pairs and students (a finished stage is skipped; an interrupted one
resumes).
``workers`` processes run the stages side by side (``run_stages``: a free process takes the next
ready stage of any teacher; 2 on a 2-core laptop), each with its own lines of progress bars.
A failing stage, SIGTERM, SIGHUP or Ctrl-C stops them all (``stage_pool``; a worker whose demo
process is gone ends itself, ``_watch_parent``); ``main`` reports a stage's refusal in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from dd.compute import check_num_threads
from dd.config import parse_recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEMO_TEACHERS = ("llamagen-digits", "var-digits", "far-digits")
RECIPE_STEM = {
    "llamagen-digits": "tiny_llamagen",
    "var-digits": "tiny_var",
    "far-digits": "tiny_far",
}
REPORT_METHODS = ("teacher", "dd", "dd+teacher", "skip", "onestep*")
GRID_LABELS = tuple(range(10))
FID_REFERENCE = "train"  # the digits split FID is measured against (docs/embedded_default.md)
IS_SPLITS = 1  # the digits classifier's IS over all samples (few samples per split otherwise)
# A student's training checkpoints every this many steps (a shorter one at its last step only):
# an interrupted one resumes from the newest, losing at most this many steps (about 2 min of
# var-digits' default training on a 2-core machine). Checkpoints do not change the student,
# byte for byte (tests/test_evaluate.py), nor its folder's name (``student_folder``).
CHECKPOINT_EVERY_STEPS = 250
DD_LIMITS = {1: 0.5, 2: 0.35}  # the stage-3 issue's rule: DD k-step FID <= teacher + x gap
ACCURACY_POINTS = 5.0  # the stage-3 issue: DD 1-step class accuracy within 5 points
SPEED_RATIO = 1.2  # the stage-3 issue: DD 1-step seconds per image <= 1.2x one teacher forward
SPEED_CHECKS = {  # timed key -> what the report calls it
    "dd 1-step": "model call",
    "dd 1-step all-in": "all-in (noise drawing, model call and decoding)",
}


@dataclass(frozen=True)
class DemoSettings:
    """One teacher's demo: overrides of its tiny recipes and the evaluation's size.

    ``methods`` as in ``dd eval`` (``dd.evaluate.parse_methods``); skips are chosen at the
    paper's fractions of the sequence (LlamaGen skip-106/156 of 256, VAR skip-1/2 of 10) and at
    the cost of DD (1 or 2 model calls)."""

    num_pairs: int
    train_steps: int
    global_batch_size: int
    num_heldout: int
    eval_per_class: int
    fid_per_class: int | None
    eval_batch_size: int
    methods: tuple[str, ...]
    # null: the tiny recipe's run.ema_decay. Note: with decay d the EMA student of an s-step
    # run still holds d**s of its initialisation (0.999**500 = 0.61), so the short demo runs
    # set a decay whose d**s is under 1% (0.99**500, 0.98**250, 0.85**30, 0.78**20, 0.88**40).
    ema_decay: float | None = None
    # null: the tiny recipe's optim.lr / schedule. A warm-up length switches to the cosine
    # schedule (rate to 0 at the last step): a short run then ends annealed
    # (docs/distillation.md, "LR schedule and EMA of short runs").
    lr: float | None = None
    cosine_warmup_steps: int | None = None

    def __post_init__(self) -> None:
        # Refused here, before pair generation: later they fail only after minutes of work.
        for key in ("num_pairs", "train_steps", "global_batch_size", "eval_per_class"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_batch_size < 1 or (self.fid_per_class is not None and self.fid_per_class < 1):
            raise ValueError(
                f"eval_batch_size ({self.eval_batch_size}) and fid_per_class "
                f"({self.fid_per_class}) must be >= 1"
            )
        if self.fid_per_class is not None and self.fid_per_class > self.eval_per_class:
            raise ValueError(  # else the FID rows would hold fewer images than the protocol's
                f"eval_per_class must be >= fid_per_class ({self.fid_per_class}, the FID "
                f"protocol's images per class), got {self.eval_per_class}"
            )
        if self.num_heldout < 0:
            raise ValueError(f"num_heldout must be >= 0, got {self.num_heldout}")
        if self.num_heldout >= self.num_pairs or self.global_batch_size > (
            self.num_pairs - self.num_heldout
        ):
            raise ValueError(
                f"{self.num_pairs} pairs leave too few for {self.num_heldout} held out and "
                f"batches of {self.global_batch_size}"
            )


COMMON_METHODS = ("teacher", "dd:1", "dd:2", "dd+teacher", "onestep*")
# Continuous tokens (FAR): Alg. 4 and skip-n run for them in dd eval / dd sample; the demo's
# FAR table keeps the rows its rules were set on.
CONTINUOUS_METHODS = ("teacher", "dd:1", "dd:2", "onestep*")
SKIPS = {
    "llamagen-digits": ("skip:26", "skip:39", "skip:62"),
    "var-digits": ("skip:1", "skip:2", "skip:4"),
}
# Default sizes: with 2 workers the stages of the three teachers add up to more than twice the
# longest teacher's (1,873 s against 801 s in the 98a3fcc run), so both cores stay busy. The
# demo's time depends on the machine far more than on these sizes: 9 min 9 s on one (450
# llamagen steps), 43 min on one 3.7x to 5.8x slower per stage (var 800 steps), 16 min on
# another (docs/demo_runs.md).
# The codebook students train with a cosine schedule from 2e-3 (the recipes: constant 1e-3);
# var-digits in batches of 32: 1,100 steps of 32 beat 600 of 64 at about the same time
# (1-step FID 8.25 against 9.34, docs/distillation.md, "LR schedule and EMA of short runs").
DEMO_PRESETS: dict[str, dict[str, DemoSettings]] = {
    "default": {
        # 1,050 steps (the teacher-KL targets cached per pair: a step costs about 0.7x, so about
        # the time 750 took): 1-step FID 7.75 / 2-step 7.35 over seeds 0-2 of eval_students.py,
        # 8.70 / 8.00 over seeds 100-102 (750 steps: 8.05 / 7.70 and 9.16 / 8.54; 450: 8.91 /
        # 8.13; the paper's readout and loss: 16.43 / 13.61 after 800; docs/distillation.md,
        # "Teacher-aligned readout and the teacher-KL term").
        "llamagen-digits": DemoSettings(
            num_pairs=4000, train_steps=1050, global_batch_size=64, num_heldout=200, ema_decay=0.99,
            lr=2e-3, cosine_warmup_steps=50,
            eval_per_class=100, fid_per_class=36, eval_batch_size=250,
            methods=COMMON_METHODS + SKIPS["llamagen-digits"],
        ),
        # 1,500 steps of 32: 1,000 missed the 2-step rule at 3 of 4 `dd eval` seeds (FID 8.92
        # on average against a limit of 8.24); 1,250 and 1,500 met both rules at all 4 (1-step /
        # 2-step 7.26 / 6.72 and 7.44 / 6.67 on average), but only at 1,500 do the
        # teacher-interleaved rows lie between DD 2-step and the teacher on average (6.16-6.35
        # against 6.67 and 4.95; 1,250: 6.74-6.97 against 6.72); about 100 s more of training
        # than 1,250 (docs/demo_runs.md, "Commit 02a0ee5's run").
        "var-digits": DemoSettings(
            num_pairs=4000, train_steps=1500, global_batch_size=32, num_heldout=200,
            ema_decay=0.99, lr=2e-3, cosine_warmup_steps=50,
            eval_per_class=100, fid_per_class=36, eval_batch_size=250,
            methods=COMMON_METHODS + SKIPS["var-digits"],
        ),
        # 1,500 steps: 500 missed the gap rule, 1,500 met it in 4 min (docs/evaluation.md).
        "far-digits": DemoSettings(
            num_pairs=4000, train_steps=1500, global_batch_size=64, num_heldout=200,
            ema_decay=0.995,
            eval_per_class=100, fid_per_class=36, eval_batch_size=250, methods=CONTINUOUS_METHODS,
        ),
    },
    "quick": {
        # Sized for the 2-core machine 3.7x-5.8x slower than the 10-minute one: 60 / 40 / 60
        # steps and 200 samples took 7 min of demo there (docs/demo_runs.md, "`--quick`"). The
        # students are far from their teachers at any of these sizes: --quick shows the run.
        "llamagen-digits": DemoSettings(
            num_pairs=600, train_steps=30, global_batch_size=64, num_heldout=100, ema_decay=0.85,
            lr=2e-3, cosine_warmup_steps=5,
            eval_per_class=10, fid_per_class=None, eval_batch_size=100,
            methods=COMMON_METHODS + SKIPS["llamagen-digits"],
        ),
        "var-digits": DemoSettings(
            num_pairs=600, train_steps=20, global_batch_size=64, num_heldout=100, ema_decay=0.78,
            lr=2e-3, cosine_warmup_steps=5,
            eval_per_class=10, fid_per_class=None, eval_batch_size=100,
            methods=COMMON_METHODS + SKIPS["var-digits"],
        ),
        "far-digits": DemoSettings(
            num_pairs=600, train_steps=40, global_batch_size=64, num_heldout=100, ema_decay=0.88,
            eval_per_class=10, fid_per_class=None, eval_batch_size=100, methods=CONTINUOUS_METHODS,
        ),
    },
}  # fmt: skip


@dataclass(frozen=True)
class DemoRecipe:
    """``dd demo``'s command line (``--quick`` = ``--preset quick``)."""

    output: str = "demo"
    """Folder of the pairs, students, grids and reports; rerunning reuses what is finished."""
    preset: Literal["default", "quick"] = "default"
    """The sizes (``DEMO_PRESETS``): default, or quick (a short run that shows the pipeline,
    its students far from their teachers)."""
    teachers: list[str] = field(default_factory=lambda: list(DEMO_TEACHERS))
    """The tiny teachers to run, distinct, among llamagen-digits, var-digits and far-digits."""
    num_threads: int | None = 1
    """Intra-op threads per process (null: torch's default). 1 by default: 2 workers of 2
    threads oversubscribe a 2-core CPU, and threads waiting for a busy core made pair
    generation several times slower (docs/evaluation.md, "`dd demo`")."""
    workers: int = 2
    """Processes running stages side by side (``run_stages``), >= 1; 1: one after another in
    this process. 2 fills a 2-core laptop with one thread each."""
    seed: int = 0
    """Seed of the grids' and the evaluation's per-sample randomness (the pairs and the
    students follow their recipes)."""
    progress_bar: bool = True
    """Show progress bars."""
    num_pairs: int | None = None
    """Pairs per teacher, overriding the preset's for every teacher (null: the preset's
    DemoSettings value)."""
    train_steps: int | None = None
    """Training steps per student, overriding the preset's for every teacher (null: the
    preset's DemoSettings value)."""
    eval_per_class: int | None = None
    """Evaluation samples per class, overriding the preset's for every teacher (null: the
    preset's DemoSettings value)."""

    def __post_init__(self) -> None:
        # Refused when read: a bad count killed the worker processes (a BrokenProcessPool).
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        check_num_threads(self.num_threads, "num_threads")

    def settings(self) -> dict[str, DemoSettings]:
        """The preset's settings of the chosen teachers, with this recipe's overrides."""
        changes = {
            key: getattr(self, key)
            for key in ("num_pairs", "train_steps", "eval_per_class")
            if getattr(self, key) is not None
        }
        preset = DEMO_PRESETS[self.preset]
        return {name: dataclasses.replace(preset[name], **changes) for name in self.teachers}


# --- the stages ------------------------------------------------------------------------------


def make_pairs(name: str, settings: DemoSettings, output: Path, progress: bool) -> Path:
    """Pairs through ``dd generate``'s engine. A finished folder is reused through the engine
    too: it checks the folder's teacher and settings against today's recipe (a changed recipe
    is refused, never mixed), verifies every shard and regenerates a deleted one."""
    from data_gen.config import GenerateRecipe
    from data_gen.engine import run_generation
    from dd.config import read_recipe

    folder = output / "pairs" / f"{name}-{settings.num_pairs}"
    recipe = read_recipe(GenerateRecipe, RECIPES_DIR / f"generate_{RECIPE_STEM[name]}.yaml")
    recipe = dataclasses.replace(
        recipe,
        pairs=dataclasses.replace(recipe.pairs, num_pairs=settings.num_pairs),
        output=dataclasses.replace(recipe.output, folder=str(folder)),
        run=dataclasses.replace(recipe.run, progress_bar=progress, num_threads=None),
    )
    if not run_generation(recipe).complete:
        raise RuntimeError(f"pair generation into {folder} did not complete")
    return folder


def demo_train_recipe(name: str, settings: DemoSettings, pairs: Path):
    """The tiny recipe of ``name`` with the demo's settings: everything a demo student's
    training depends on (``run.output`` empty and bars off: the caller sets them)."""
    from dd.config import read_recipe
    from dd.train_recipe import TrainRecipe

    recipe = read_recipe(TrainRecipe, RECIPES_DIR / f"distill_{RECIPE_STEM[name]}.yaml")
    optim = recipe.optim
    if settings.lr is not None:
        optim = dataclasses.replace(optim, lr=settings.lr)
    if settings.cosine_warmup_steps is not None:
        optim = dataclasses.replace(
            optim, schedule="cosine", warmup_steps=settings.cosine_warmup_steps
        )
    return dataclasses.replace(
        recipe,
        optim=optim,
        pairs=dataclasses.replace(
            recipe.pairs, folder=str(pairs), num_heldout=settings.num_heldout
        ),
        run=dataclasses.replace(
            recipe.run,
            output="",
            max_steps=settings.train_steps,
            ema_decay=recipe.run.ema_decay if settings.ema_decay is None else settings.ema_decay,
            global_batch_size=settings.global_batch_size,
            val_every_steps=settings.train_steps,
            checkpoint_every_steps=min(settings.train_steps, CHECKPOINT_EVERY_STEPS),
            num_threads=None,
            progress_bar=False,
        ),
    )


def student_folder(name: str, settings: DemoSettings, recipe, output: Path) -> Path:
    """The run folder of a demo student, named by a digest of its whole training recipe
    (``demo_train_recipe``): a finished student is reused only for the same training, and
    other settings get their own folder. The digest reads the pair folder relative to
    ``output``: how ``--output`` is spelled (relative, absolute, ``x/../x``) or where the
    output folder has moved does not rename the student (it retrained into a second folder).
    How often the training checkpoints is left out (read as its last step only): it does not
    change the student."""
    from dd.config import dump_yaml

    pairs = os.path.relpath(Path(recipe.pairs.folder).resolve(), Path(output).resolve())
    run = dataclasses.replace(recipe.run, checkpoint_every_steps=recipe.run.max_steps)
    named = dataclasses.replace(
        recipe, pairs=dataclasses.replace(recipe.pairs, folder=pairs), run=run
    )
    digest = hashlib.sha256(dump_yaml(named).encode()).hexdigest()
    return output / "students" / f"{name}-{settings.num_pairs}-{settings.train_steps}-{digest[:8]}"


def distil(name: str, settings: DemoSettings, pairs: Path, output: Path, progress: bool) -> Path:
    """A student through ``dd train``'s module; a finished one is reused, a stopped one resumed."""
    from dd.checkpoint import CARD_FILE
    from dd.config import dump_yaml
    from dd.train_command import train

    recipe = demo_train_recipe(name, settings, pairs)
    run_folder = student_folder(name, settings, recipe, output)
    student = run_folder / "student"
    card = student / CARD_FILE
    if card.is_file() and json.loads(card.read_text())["record"]["steps"] >= settings.train_steps:
        return student
    run = dataclasses.replace(recipe.run, output=str(run_folder), progress_bar=progress)
    recipe = dataclasses.replace(recipe, run=run)
    train(recipe, dump_yaml(recipe))
    return student


def demo_samplers(student_folder: Path, pairs: Path, methods: Sequence[str]):
    """(``dd.evaluate.Samplers``, interleave preset key) of a student and its pair folder for
    ``methods``, as ``dd eval`` builds them (``dd.eval_command.build_setup``)."""
    from dd.eval_command import build_setup

    setup = build_setup(str(student_folder), None, str(pairs), methods=list(methods))
    return setup.samplers, setup.preset_key


def evaluate_teacher(
    name: str,
    settings: DemoSettings,
    pairs: Path,
    student_folder: Path,
    output: Path,
    *,
    seed: int,
    progress: bool,
) -> dict:
    """Grid and evaluation rows of one teacher (``dd.evaluate``, digits space)."""
    from dd.evaluate import (
        Reference,
        evaluate_methods,
        forward_seconds_per_image,
        generate,
        parse_methods,
    )
    from dd.grids import labelled_grid
    from dd.metrics.spaces import DigitsSpace
    from teachers.data import load_digits_split

    samplers, preset_key = demo_samplers(student_folder, pairs, settings.methods)
    teacher = samplers.teacher
    methods = parse_methods(settings.methods, samplers, preset_key=preset_key)
    grid_labels = torch.tensor(GRID_LABELS)
    rows = []
    for method in methods:
        images, _ = generate(method, samplers, grid_labels, seed=seed, batch_size=10)
        rows.append((f"{method.name} ({method.steps} st.)", images))
    grid = output / "grids" / f"{name}.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, list(GRID_LABELS)).save(grid)

    space = DigitsSpace()
    reference = Reference.from_images(space, load_digits_split(FID_REFERENCE).images_01())
    labels = torch.arange(teacher.num_classes).repeat_interleave(settings.eval_per_class)
    fid_rows = None
    if settings.fid_per_class is not None:
        fid_rows = torch.cat(
            [(labels == c).nonzero().flatten()[: settings.fid_per_class]
             for c in range(teacher.num_classes)]
        )  # fmt: skip
    # image_size None: the digits classifier reads the images as the tiny teachers make them.
    results = evaluate_methods(
        methods, samplers, labels, space, reference,
        seed=seed, batch_size=settings.eval_batch_size, fid_rows=fid_rows,
        is_splits=IS_SPLITS, image_size=None, progress=progress,
    )  # fmt: skip
    # The speed targets are DD 1-step's: only it is timed against the forward (15 rounds of
    # every DD method took var-digits' `--quick` evaluation from 24 s to 50 s).
    one_step = [m for m in methods if m.kind == "dd" and m.dd_steps == 1]
    timing = forward_seconds_per_image(samplers, one_step, settings.eval_batch_size, seed=seed)
    return {
        "family": teacher.family,
        "num_tokens": teacher.geometry.num_tokens,
        "num_ar_steps": teacher.geometry.num_steps,
        "one_forward_seconds_per_image": timing.seconds_per_image["forward"],
        **timing.as_json(),
        "details": results,
        "grid": str(grid.relative_to(output)),
        "num_samples": int(labels.shape[0]),
        "fid_samples": int(labels.shape[0] if fid_rows is None else fid_rows.shape[0]),
    }


# --- the report ------------------------------------------------------------------------------

# The row schema, and "name" (e.g. "dd+teacher pre-trained-2-4", "skip-1"): rows of one
# method and step count (two interleaving ranges of the same cost) are otherwise the same key.
ROW_KEYS = ("method", "name", "steps", "fid", "class_accuracy", "seconds_per_image")
TEACHER_KEYS = ("family", "num_tokens", "num_ar_steps", "one_forward_seconds_per_image")


def report_json(results: dict[str, dict], run: dict | None = None) -> dict:
    """``{"teachers": {name: {family, num_tokens, num_ar_steps, one_forward_seconds_per_image,
    rows: [{method, name, steps, fid, class_accuracy, seconds_per_image}]}}}`` (the issue's
    schema, and each row's name), and ``"run"``: what produced them (``run_record``)."""
    report = {
        "teachers": {
            name: {
                **{key: result[key] for key in TEACHER_KEYS},
                "rows": [{key: row[key] for key in ROW_KEYS} for row in result["details"]],
            }
            for name, result in results.items()
        }
    }
    return report if run is None else {**report, "run": run}


def run_record(settings: dict[str, DemoSettings], preset: str, seed: int) -> dict:
    """``{"preset", "seed", "overridden": {teacher: {key: value}}, "settings": {teacher:
    DemoSettings}}``: the run's settings, and which of them differ from the preset's
    (``--train_steps`` and the like; ``overridden`` is null for settings of no preset)."""

    def plain(settings: DemoSettings) -> dict:
        return {key: list(v) if isinstance(v, tuple) else v
                for key, v in dataclasses.asdict(settings).items()}  # fmt: skip

    overridden = None
    if preset in DEMO_PRESETS:
        overridden = {}
        for name, chosen in settings.items():
            preset_values, values = plain(DEMO_PRESETS[preset][name]), plain(chosen)
            changed = {key: v for key, v in values.items() if v != preset_values[key]}
            if changed:
                overridden[name] = changed
    return {
        "preset": preset,
        "seed": seed,
        "overridden": overridden,
        "settings": {name: plain(chosen) for name, chosen in settings.items()},
    }


def describe_run(run: dict) -> str:
    """report.md's words for ``run_record``: "Preset `quick`, overridden: train_steps 400; seed
    0" (a value that differs between teachers is given per teacher)."""
    words = f"Preset `{run['preset']}`"
    changes: dict[str, dict[str, object]] = {}
    for name, changed in (run["overridden"] or {}).items():
        for key, value in changed.items():
            changes.setdefault(key, {})[name] = value
    if changes:
        said = []
        for key, by_teacher in changes.items():
            values = set(map(str, by_teacher.values()))
            if len(by_teacher) == len(run["settings"]) and len(values) == 1:
                said.append(f"{key} {values.pop()}")
            else:
                said.append(f"{key} " + ", ".join(f"{v} ({n})" for n, v in by_teacher.items()))
        words += ", overridden: " + "; ".join(said)
    return f"{words}; seed {run['seed']}"


def stage3_checks(result: dict) -> list[str]:
    """The stage-3 issue's targets, as measured in this run (met or not): the FID gap rule, DD
    1-step accuracy, teacher-interleaved rows between DD 2-step and the teacher, DD against
    the skip rows of the same model calls, and DD 1-step time against one teacher forward
    (in all, and of its model call alone: noise drawing and decoding are not in the forward)."""
    by_name = {row["name"]: row for row in result["details"]}
    if "teacher" not in by_name or "onestep*" not in by_name:
        return []
    teacher = by_name["teacher"]
    gap = by_name["onestep*"]["fid"] - teacher["fid"]
    lines = [f"gap = FID(onestep*) - FID(teacher) = {gap:.2f}"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for steps, share in DD_LIMITS.items():
        row = by_name.get(f"dd {steps}-step")
        if row is not None:
            limit = teacher["fid"] + share * gap
            lines.append(
                f"DD {steps}-step FID {row['fid']:.2f} <= teacher + {share} gap = {limit:.2f}: "
                f"{verdict(row['fid'] <= limit)}"
            )
    one, two = by_name.get("dd 1-step"), by_name.get("dd 2-step")
    if one is not None:
        points = 100 * (teacher["class_accuracy"] - one["class_accuracy"])
        lines.append(
            f"DD 1-step class accuracy {100 * one['class_accuracy']:.1f}% within "
            f"{ACCURACY_POINTS} points of the teacher's {100 * teacher['class_accuracy']:.1f}%: "
            f"{verdict(points <= ACCURACY_POINTS)}"
        )
        forward = result["one_forward_seconds_per_image"]
        ratios = result["to_forward"]  # DD 1-step is timed whenever it is evaluated
        for key, what in SPEED_CHECKS.items():
            ratio = ratios[key]  # each ratio within one alternated round, then the median
            seconds = result["alternated_seconds_per_image"][key]
            lines.append(
                f"DD 1-step {what}: {ratio['median']:.2f}x one teacher forward, the ratio "
                f"within each of {result['timing_rounds']} rounds timed alternately, median "
                f"(quartiles {ratio['low']:.2f}x-{ratio['high']:.2f}x; median times "
                f"{1000 * seconds:.2f} and {1000 * forward:.2f} ms per image), "
                f"<= {SPEED_RATIO}x: {verdict(ratio['median'] <= SPEED_RATIO)}"
            )
        decode = ratios["decode"]  # the all-in ratio of a model call costing exactly one forward
        lines.append(
            f"of which decoding alone {decode['median']:.2f}x one forward (timed in the "
            f"same rounds; quartiles {decode['low']:.2f}x-{decode['high']:.2f}x): a model "
            f"call exactly as fast as the forward would be {1 + decode['median']:.2f}x all-in"
        )
    mixed = [row for row in result["details"] if row["method"] == "dd+teacher"]
    if two is not None and mixed:
        low, high = sorted((teacher["fid"], two["fid"]))
        inside = [row["name"] for row in mixed if low <= row["fid"] <= high]
        lines.append(
            f"DD + teacher rows with FID between the teacher ({teacher['fid']:.2f}) and DD "
            f"2-step ({two['fid']:.2f}): {len(inside)} of {len(mixed)}"
        )
    skips = [row for row in result["details"] if row["method"] == "skip"]
    for row in (r for r in (one, two) if r is not None):
        for skip in (s for s in skips if s["steps"] <= row["steps"] + 1):
            lines.append(
                f"DD {row['steps']}-step FID {row['fid']:.2f} against {skip['name']} "
                f"({skip['steps']} model calls) {skip['fid']:.2f}: "
                f"{verdict(row['fid'] < skip['fid'])}"
            )
    return lines


def report_markdown(
    results: dict[str, dict],
    timings: dict[str, float],
    run: dict,
    workers: int = 1,
    num_threads: int | None = None,
) -> str:
    threads = torch.get_num_threads() if num_threads is None else num_threads
    side_by_side = (
        f"{workers} processes running stages side by side (timings share the CPU)"
        if workers > 1 and len(results) > 1
        else "one stage at a time"
    )
    lines = [
        "# Distilled Decoding demo",
        "",
        f"{describe_run(run)}; CPU, {threads} threads per process, "
        f"{side_by_side}. Quality in the digits "
        f"classifier's space (FID against the {FID_REFERENCE} split; IS over all samples); "
        "seconds per image include decoding. `steps` = model calls per image.",
        "",
    ]
    for name, result in results.items():
        forward_ms = 1000 * result["one_forward_seconds_per_image"]
        lines += [
            f"## {name} ({result['family']}, {result['num_tokens']} tokens in "
            f"{result['num_ar_steps']} AR steps)",
            "",
            f"{result['num_samples']} samples ({result['fid_samples']} in FID and precision/"
            f"recall); one full-sequence teacher forward: {forward_ms:.2f} ms per image "
            "(timed alternately with the DD model calls, median of "
            f"{result['timing_rounds']} rounds).",
            "",
            "| method | steps | FID | IS | precision | recall | class accuracy | ms per image "
            "| of which model calls |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["details"]:
            lines.append(
                f"| {row['name']} | {row['steps']} | {row['fid']:.2f} | "
                f"{row['inception_score']:.2f} | {row['precision']:.2f} | {row['recall']:.2f} | "
                f"{100 * row['class_accuracy']:.1f}% | {1000 * row['seconds_per_image']:.2f} | "
                f"{1000 * row['model_seconds_per_image']:.2f} |"
            )
        lines += [""] + [f"- {line}" for line in stage3_checks(result)]
        lines += ["", f"![{name}]({result['grid']})", ""]
    lines += ["## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()]
    lines += ["", "![quality versus steps](quality_vs_steps.png)", ""]
    return "\n".join(lines)


def quality_figure(results: dict[str, dict]):
    """FID against model calls per image (log, o), ms per image on the right axis (x), one
    panel per teacher. A row's two markers share its colour, named in the panel's legend with
    its model calls: the grey x's of rows of the same calls (llamagen's DD 2-step and skip-62,
    var's three rows at 4 calls) could not be told apart. Tick labels that would overlap go a
    line lower (``stagger_tick_labels``: 21 and 25 read "2125")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5.5), squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items(), strict=True):
        seconds_axis = axis.twinx()
        for index, row in enumerate(result["details"]):
            color = f"C{index % 10}"
            calls = f"{row['steps']} call{'s' if row['steps'] != 1 else ''}"
            axis.scatter(row["steps"], row["fid"], marker="o", color=color,
                         label=f"{row['name']} ({calls})")  # fmt: skip
            axis.annotate(row["name"], (row["steps"], row["fid"]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")  # fmt: skip
            seconds_axis.scatter(row["steps"], 1000 * row["seconds_per_image"], marker="x",
                                 color=color)  # fmt: skip
        forward_ms = 1000 * result["one_forward_seconds_per_image"]
        seconds_axis.axhline(forward_ms, color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_xticks(sorted({row["steps"] for row in result["details"]}))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_yscale("log")  # skip-n rows reach hundreds; DD and the teacher sit near 10
        axis.set_xlabel("model calls per image (log)")
        axis.set_ylabel("FID, digits features (o, log)")
        seconds_axis.set_ylabel("ms per image (x, the colour of its row; dotted: one forward)")
        axis.set_title(name)
        axis.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    figure.tight_layout()
    for axis in axes[0]:
        stagger_tick_labels(figure, axis)
    return figure


def stagger_tick_labels(figure, axis) -> None:
    """The x tick labels (integers), each on the first of two lines where it does not overlap
    the label before it; left out when both are taken (the legend gives every row's calls)."""
    figure.canvas.draw()
    ticks = list(axis.get_xticks())
    axis.set_xticks(ticks, [str(int(tick)) for tick in ticks])
    figure.canvas.draw()
    ends = [float("-inf"), float("-inf")]  # right end of the last label on each line, pixels
    labels = []
    for label in axis.get_xticklabels():
        box = label.get_window_extent()
        line = next((k for k, end in enumerate(ends) if box.x0 > end + 2), None)
        if line is None:
            labels.append("")
        else:
            ends[line] = box.x1
            labels.append("\n" * line + label.get_text())
    axis.set_xticks(ticks, labels)


def plot_quality_vs_steps(results: dict[str, dict], path: Path) -> None:
    """``quality_figure``, saved (legends below the panels included)."""
    import matplotlib.pyplot as plt

    figure = quality_figure(results)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


STAGES = ("pairs", "distil", "evaluate")  # one teacher's stages, each needing the one before


def run_stage(
    stage: str,
    name: str,
    settings: DemoSettings,
    output: Path,
    done: dict[str, object],
    *,
    seed: int,
    progress: bool,
) -> tuple[object, float]:
    """One stage of one teacher, given what its earlier stages returned (``done``, by stage):
    (its result: the pair folder, the student folder, or the evaluation; seconds)."""
    if _IN_WORKER:  # here, not at a worker's start: a stopped pool's workers start in 2 s, not 5
        quiet_lightning()  # (in the demo's own process run_demo quiets it for the run only)
    began = time.perf_counter()
    if stage == "pairs":
        result = make_pairs(name, settings, output, progress)
    elif stage == "distil":
        result = distil(name, settings, done["pairs"], output, progress)
    else:
        result = evaluate_teacher(
            name, settings, done["pairs"], done["distil"], output, seed=seed, progress=progress
        )
    return result, time.perf_counter() - began


def run_stages(
    settings: dict[str, DemoSettings],
    output: Path,
    submit: Callable[..., Future],
    slots: int,
    *,
    seed: int,
    progress: bool,
) -> tuple[dict[str, dict], dict[str, float]]:
    """Every teacher's stages, at most ``slots`` at a time through ``submit`` (a process pool's,
    or one that runs the stage at once). A free slot takes the ready stage that comes first in
    ``STAGES``, ties in teacher order: every teacher's pairs and training start before any
    evaluation, and the evaluations fill the gaps the long trainings leave. (Whole teachers per
    worker left one core idle for the last 246 s of the default run, 1,194 s, on a 2-core
    machine: docs/demo_runs.md.) Returns (results, seconds by stage)."""
    names = list(settings)
    done: dict[str, dict[str, object]] = {name: {} for name in names}
    timings: dict[str, float] = {}
    ready = [(0, index) for index in range(len(names))]
    running: dict[Future, tuple[int, int]] = {}
    bar = tqdm(total=len(names), desc="demo: teachers done", disable=not progress)
    while ready or running:
        while ready and len(running) < slots:
            stage, index = min(ready)
            ready.remove((stage, index))
            name = names[index]
            future = submit(
                run_stage, STAGES[stage], name, settings[name], output, done[name],
                seed=seed, progress=progress,
            )  # fmt: skip
            running[future] = (stage, index)
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            stage, index = running.pop(future)
            name = names[index]
            try:
                done[name][STAGES[stage]], timings[f"{name} {STAGES[stage]}"] = future.result()
            except Exception as error:  # the caller stops the other stages (``stage_pool``)
                error.add_note(f"in the {STAGES[stage]} stage of {name}")
                raise
            if stage + 1 < len(STAGES):
                ready.append((stage + 1, index))
            else:
                bar.set_postfix_str(name)
                bar.update()
    bar.close()
    by_teacher = {f"{n} {stage}": timings[f"{n} {stage}"] for n in names for stage in STAGES}
    return {name: done[name]["evaluate"] for name in names}, by_teacher


def run_now(function: Callable, *args, **kwargs) -> Future:
    """``submit`` without a pool: the stage runs here, and its future is already done."""
    future: Future = Future()
    try:
        future.set_result(function(*args, **kwargs))
    except BaseException as error:  # handed to the caller through future.result()
        future.set_exception(error)
    return future


PARENT_POLL_SECONDS = 0.5  # how often a worker process checks that the demo's process lives


def _watch_parent(parent: int) -> None:
    """A worker's daemon thread: ends the worker once the demo's process (``parent``) is gone,
    killed before it could stop its pool. Such orphans finished their stage, then waited
    forever on the pool's pipe (about 840 MB each), training the same student as a rerun."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


_IN_WORKER = False  # set in the pool's worker processes (``_start_worker``)


def _start_worker(slots, lock, num_threads: int | None, parent: int) -> None:
    """A worker process: ended when the demo's process is gone (``_watch_parent``), its own two
    lines of progress bars (tqdm's ``TQDM_POSITION``, which ``dd.train_command.make_trainer``
    follows too), the shared tqdm lock, its thread count."""
    global _IN_WORKER
    _IN_WORKER = True
    # Ctrl-C reaches the terminal's whole process group: the demo's process stops the pool
    # (``stopped_by_signals``), a worker interrupted on its own printed its traceback too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    os.environ["TQDM_POSITION"] = str(2 * slot + 2)  # lines 2k+2, 2k+3 (0: the demo's own)
    tqdm.set_lock(lock)
    if num_threads is not None:
        torch.set_num_threads(num_threads)


@contextmanager
def stage_pool(slots: int, num_threads: int | None) -> Iterator[ProcessPoolExecutor]:
    """``slots`` spawned worker processes (``_start_worker``). Left by an exception (a failed
    stage, ``DemoStopped``), the pool is stopped at once (``stop_pool``): leaving it
    normally waits for the running stages, minutes of training."""
    context = multiprocessing.get_context("spawn")
    lock = context.RLock()  # one tqdm lock for every process' bars
    tqdm.set_lock(lock)
    pool = ProcessPoolExecutor(
        max_workers=slots,
        mp_context=context,
        initializer=_start_worker,
        initargs=(context.Value("i", 0), lock, num_threads, os.getpid()),
    )
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown()


def stop_pool(pool: ProcessPoolExecutor, grace_seconds: float = 2.0) -> None:
    """Cancel the stages not started and end the running ones: SIGTERM, then SIGKILL to those
    still alive after ``grace_seconds`` (a training under Lightning's SIGTERM handler stops at
    its next step, then waits for more work). A stopped stage resumes on a rerun: pair shards,
    checkpoints and students are written to a temporary file and renamed."""
    # The pool's own processes (Python 3.14's terminate_workers does the same).
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


class DemoStopped(BaseException):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP to the demo's process (``stopped_by_signals``):
    raised there so that it stops its worker processes (``stage_pool``) before it ends."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``DemoStopped`` in the main thread (the first one; the
    handlers are restored then, so a second signal acts as it would have). A signal the demo
    started with ignored stays ignored: SIGHUP under ``nohup``, SIGINT in a background job of
    a script. Nothing in another thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    previous = {number: was for number, was in previous.items() if was != signal.SIG_IGN}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def stop(signum, frame) -> None:
        restore()
        raise DemoStopped(signum)

    for number in previous:
        signal.signal(number, stop)
    try:
        yield
    finally:
        restore()


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def quiet_lightning() -> dict[str, int]:
    """Keep the bars only: Lightning's INFO lines (devices, tips) off. Lightning sets its
    loggers' levels when first imported, so it is imported before they are lowered. Returns
    the levels they had (``lightning_quieted`` restores them)."""
    import lightning.pytorch  # noqa: F401

    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return levels


@contextmanager
def lightning_quieted() -> Iterator[None]:
    """``quiet_lightning`` for a block: the stages run in the caller's own process (one
    worker) leave its Lightning loggers as they were (a test after a demo missed their INFO
    lines)."""
    levels = quiet_lightning()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


MARKER_FILE = ".dd-demo"  # a demo's output folder (``claim_output``)
# What a demo writes at the top of its output folder: a folder of an older demo (before the
# marker) holds nothing else.
REPORT_FILES = ("report.md", "report.json", "timings.json", "quality_vs_steps.png")
DEMO_ENTRIES = ("pairs", "students", "grids", *REPORT_FILES, ".dd-demo.lock")


def claim_output(output: Path):
    """The demo's hold on ``output`` (a ``FolderLock``, to release): created if need be, refused
    if it holds anything but a demo's (no ``MARKER_FILE``; a folder of an older demo, all
    ``DEMO_ENTRIES`` with its ``pairs``, is taken) or another demo is writing it (the lock: two
    demos trained the same students). Every report file there is rewritten by the run: a
    user's own folder lost its report.md. A file, a path under a file or a folder that cannot
    be made is a ValueError naming ``output``, before any work."""
    from data_gen.shards import FolderLock

    try:
        output.mkdir(parents=True, exist_ok=True)
        marker = output / MARKER_FILE
        if not marker.is_file():
            entries = {entry.name for entry in output.iterdir()}
            older_demo = "pairs" in entries and entries <= set(DEMO_ENTRIES)
            if entries and not older_demo:
                raise ValueError(
                    f"{output} is not empty and is not a dd demo folder (no {MARKER_FILE}): the "
                    "demo writes its reports there, over files of the same names. Give a new "
                    "or empty folder"
                )
        # Before the lock: a second demo started meanwhile finds a demo's folder, then the lock.
        marker.write_text(
            "A dd demo output folder: every dd demo run into it rewrites its reports.\n"
        )
        lock = FolderLock(output, "dd demo")
        lock.acquire()  # a ShardError if another dd demo holds it
    except OSError as error:
        raise ValueError(f"cannot use {output} as the output folder: {error}") from error
    return lock


def remove_previous_reports(output: Path) -> None:
    """The report files of the folder's previous run (only the files the demo writes): an
    interrupted rerun with another seed left its grid beside the earlier run's reports. The
    new ones are written as the run goes (grids) and at its end (the rest)."""
    for name in REPORT_FILES:
        (output / name).unlink(missing_ok=True)
    grids = output / "grids"
    for name in DEMO_TEACHERS:
        (grids / f"{name}.png").unlink(missing_ok=True)
    if grids.is_dir() and not any(grids.iterdir()):
        grids.rmdir()


def run_demo(
    output: str | Path,
    settings: dict[str, DemoSettings],
    *,
    preset: str = "custom",
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    num_threads: int | None = None,
) -> dict:
    """Every stage for every teacher of ``settings``; returns the report.json content. With
    ``workers`` > 1 the teachers run in that many spawned processes (the same results: every
    stage is seeded; ``num_threads`` sets each process' intra-op threads, as it does here)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    output = Path(output)
    lock = claim_output(output)
    try:
        remove_previous_reports(output)
        if workers == 1:
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            with lightning_quieted():
                results, timings = run_stages(
                    settings, output, run_now, 1, seed=seed, progress=progress
                )
        else:
            slots = min(workers, len(settings))  # one teacher's stages run one after another
            with stage_pool(slots, num_threads) as pool:
                results, timings = run_stages(
                    settings, output, pool.submit, slots, seed=seed, progress=progress
                )
        run = run_record(settings, preset, seed)
        report = report_json(results, run)
        (output / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        plot_quality_vs_steps(results, output / "quality_vs_steps.png")
        markdown = report_markdown(results, timings, run, workers, num_threads)
        (output / "report.md").write_text(markdown)
        (output / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    finally:
        lock.release()
    return report


def main(argv: list[str]) -> int:
    argv = ["--preset=quick" if arg == "--quick" else arg for arg in argv]
    recipe, _ = parse_recipe(DemoRecipe, argv, prog="dd demo")
    unknown = sorted(set(recipe.teachers) - set(DEMO_TEACHERS))
    if unknown or not recipe.teachers or len(set(recipe.teachers)) < len(recipe.teachers):
        print(
            f"dd demo: give one or more distinct teachers among {list(DEMO_TEACHERS)}, got "
            f"{recipe.teachers}",
            file=sys.stderr,
        )
        return 1
    try:
        settings = recipe.settings()
    except ValueError as error:
        print(f"dd demo: {error}", file=sys.stderr)
        return 1
    if not RECIPES_DIR.is_dir():  # a non-editable install: the recipes are not package data
        print(
            f"dd demo: the demo reads the tiny recipes of the repository's recipes/ folder, "
            f"not found at {RECIPES_DIR}: install from a clone with `pip install -e .`",
            file=sys.stderr,
        )
        return 1
    from data_gen.shards import ShardError

    began = time.perf_counter()
    try:
        with stopped_by_signals():
            report = run_demo(
                recipe.output,
                settings,
                preset=recipe.preset,
                seed=recipe.seed,
                progress=recipe.progress_bar,
                workers=recipe.workers,
                num_threads=recipe.num_threads,
            )
    except DemoStopped as stopped:
        print(
            f"dd demo: {stopped}, its running stages too. Rerunning the same command reuses "
            "the finished stages and resumes the others",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    except (ShardError, ValueError, OSError) as error:  # a stage's refusal: its message only
        where = "".join(f" ({note})" for note in getattr(error, "__notes__", ()))
        print(f"dd demo: {error}{where}", file=sys.stderr)
        return 1
    print((Path(recipe.output) / "report.md").read_text())
    print(f"dd demo: {time.perf_counter() - began:.0f} s; report in {recipe.output}/report.md")
    return 0 if report["teachers"] else 1
