"""``dd train --recipe recipes/distill_<name>.yaml [--section.key value ...] [--print_config]``.

Stage 2 (paper Alg. 2). The recipe is parsed by jsonargparse from ``dd.train_recipe``'s typed
dataclasses: dotted overrides (``--optim.lr 2e-4``), ``--print_config`` prints the resolved
recipe and exits (the dry run), unknown keys are an error. The resolved recipe is saved as
``<run.output>/recipe.yaml``; checkpoints go to ``<run.output>/checkpoints`` and rerunning the
same command resumes from ``last.ckpt``; the final student (EMA weights) is written to
``<run.output>/student`` (``dd.load_student`` reads it).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from dd.compute import LIGHTNING_PYTREE_WARNING, run_section_refusal
from dd.config import parse_recipe, recipe_from_dict, recipe_to_dict
from dd.train_recipe import RunSection, TrainRecipe

log = logging.getLogger(__name__)
LAST_CHECKPOINT = "last.ckpt"
PAIRS_IDENTITY = "pairs.json"  # which pairs the run trains on (dd.data.pair_identity)
INIT_RECORD = "init_from.json"  # what student.init_from was at the run's first start
STUDENT_FOLDER = "student"  # the final student (EMA weights), dd.load_student's folder


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was written at (memory-mapped: its tensors, the
    student, its EMA and the optimiser's moments, are not read); a clear error for a file an
    interrupted save left unreadable."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError) as error:  # torch's zip reader: RuntimeError
        raise ValueError(
            f"{path} cannot be read ({type(error).__name__}: an interrupted save?): copy the "
            f"newest readable epoch=*-step=*.ckpt beside it over it to resume from there, or "
            f"delete {path.parent.parent} to start over"
        ) from error
    return int(checkpoint["global_step"])


def ema_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The averaged (EMA) weights of a Lightning checkpoint: ``EMAWeightAveraging`` stores them
    as the checkpoint's ``state_dict`` (the current weights go to ``current_model_state``)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# What a resumed run may change: how it reports, paces and checkpoints itself, and (with the
# constant schedule only) how long it goes on; anything else would splice two recipes.
RESUMABLE_KEYS = (
    "run.progress_bar",
    "run.num_threads",
    "run.val_every_steps",
    "run.checkpoint_every_steps",
    "run.max_steps",
    "pairs.memory_map",  # where the same pairs are held, not which
)
# Where the run's processes are: global batch s is the same pairs and timesteps whatever the
# number of processes (dd.data.BatchOrder), so a pre-empted run may resume on another node
# or device count (under DDP; the same global_batch_size). Float reduction order aside.
PLACEMENT_KEYS = ("run.accelerator", "run.devices", "run.num_nodes", "run.strategy")
# The run folder itself may be at another path (a shared file system mounted elsewhere, a
# relative path): the recipe compared is the one inside it.
FOLDER_KEYS = ("run.output",)
# Paths whose content is checked instead (PAIRS_IDENTITY): the pairs by their identity, and
# the teacher through them (dd.data.load_pairs refuses pairs of another teacher fingerprint).
CHECKED_PATH_KEYS = ("pairs.folder", "teacher.checkpoint", "teacher.tokenizer_checkpoint")


def flat_items(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of nested recipe data."""
    if not isinstance(data, dict):
        return {prefix: data}
    items: dict[str, Any] = {}
    for key, value in data.items():
        items.update(flat_items(value, f"{prefix}.{key}" if prefix else key))
    return items


def check_resumable(recipe: TrainRecipe, output: Path) -> None:
    """Refuse to resume ``output``'s last checkpoint under a recipe that differs from the one
    that run was started with (``output/recipe.yaml``) beyond ``RESUMABLE_KEYS``: the steps
    after the checkpoint would follow other settings and the saved recipe would not say so."""
    saved = output / "recipe.yaml"
    if not ((output / "checkpoints" / LAST_CHECKPOINT).is_file() and saved.is_file()):
        return
    before = flat_items(
        recipe_to_dict(recipe_from_dict(TrainRecipe, yaml.safe_load(saved.read_text())))
    )
    after = flat_items(recipe_to_dict(recipe))
    trained_on = output / PAIRS_IDENTITY
    allowed = {*RESUMABLE_KEYS, *PLACEMENT_KEYS, *FOLDER_KEYS}
    if trained_on.is_file():  # runs before it was written compare the paths themselves
        allowed.update(CHECKED_PATH_KEYS)
    if (output / INIT_RECORD).is_file():  # read at the first start only: it may have moved
        allowed.add("student.init_from")
    if recipe.optim.schedule == "cosine":  # its rates depend on run.max_steps
        allowed.discard("run.max_steps")
    changed = [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if key not in allowed and before.get(key) != after.get(key)
    ]
    if changed:
        raise ValueError(
            f"{output} holds a run started with another recipe ({saved}); resuming it would "
            f"change {'; '.join(changed)}. Give a new run.output, or delete {output} to start over"
        )
    # The same pairs.folder path may hold other pairs by now (regenerated with another seed or
    # count), or a moved folder other ones: the held-out split and the batch order would change
    # under the resumed steps.
    if trained_on.is_file():
        from dd.data import pair_identity

        before_pairs = json.loads(trained_on.read_text())
        now = pair_identity(recipe.pairs.folder)
        if now is not None:  # what the run recorded (runs before shard_sha256 lack it)
            now = {key: now.get(key) for key in before_pairs}
        if now != before_pairs:
            raise ValueError(
                f"{recipe.pairs.folder} no longer holds the pairs {output} was trained on "
                f"({trained_on}: {before_pairs}; now {now}). Give a new run.output, or the "
                "original pairs"
            )


def make_trainer(run: RunSection, output: Path, *, unused_parameters: bool = False):
    """The Trainer of ``dd train`` (also timed by ``benchmarks/bench_train.py``): EMA through
    ``dd.ema.FrozenSharingEMA`` (Lightning's weight averaging, the frozen parts shared), step
    checkpoints with ``last.ckpt``, gradient clipping, precision and strategy from the recipe.
    Its bars start at tqdm's own ``TQDM_POSITION`` line, as every other bar does (``dd demo``'s
    worker processes set it).

    ``unused_parameters``: some trainable parameters get no gradient (a head whose loss term
    is off), which DDP must be told. The EMA averages parameters only: averaging the buffers
    (AR-step boundaries, level ids, masks) rounds integer ones down (at decay 0.9999, 126 of
    0..680), which moved validation's boundaries."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy

    from dd.ema import FrozenSharingEMA

    bars = []
    if run.progress_bar:  # Lightning's bars take lines 2k and 2k+1 for process_position k
        bars = [TQDMProgressBar(process_position=int(os.environ.get("TQDM_POSITION", 0)) // 2)]

    many = run.devices * run.num_nodes != 1  # "auto" picks DDP then (devices -1: all of them)
    return pl.Trainer(
        default_root_dir=output,
        accelerator=run.accelerator,
        devices=run.devices,
        num_nodes=run.num_nodes,
        strategy=(
            DDPStrategy(find_unused_parameters=True)
            if unused_parameters and (run.strategy == "ddp" or (run.strategy == "auto" and many))
            else run.strategy
        ),
        precision=run.precision,
        # Lightning's default logger, named: its choice announced itself (tensorboardX) and
        # advertised a cloud logger on every run. Logged every 50 steps, or once in a shorter
        # run (a 20-step check left an empty log).
        logger=CSVLogger(output, name="lightning_logs"),
        log_every_n_steps=min(50, run.max_steps),
        max_steps=run.max_steps,
        gradient_clip_val=run.gradient_clip_norm,
        val_check_interval=run.val_every_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_progress_bar=run.progress_bar,
        callbacks=[
            FrozenSharingEMA(decay=run.ema_decay),
            ModelCheckpoint(
                dirpath=output / "checkpoints",
                every_n_train_steps=run.checkpoint_every_steps,
                save_last=True,
                save_top_k=-1,
            ),
            *bars,
        ],  # fmt: skip
    )


def make_trainer_of_recipe(run: RunSection, output: Path, unused_parameters: bool):
    """``make_trainer``, with Lightning's refusal of the run section (an accelerator this
    machine lacks) as a ValueError that names the flags running it on the CPU."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return make_trainer(run, output, unused_parameters=unused_parameters)
    except MisconfigurationException as error:
        raise ValueError(run_section_refusal(error)) from error


def train(recipe: TrainRecipe, resolved_yaml: str, command: str | None = None):
    """Stage 2 of ``recipe``. Everything the recipe can get wrong (the teacher, the pair folder
    and its split, the student's timesteps and split, the perceptual network's file) is
    checked before the pairs are loaded: at the paper's size that load is the largest cost of
    a start (52-104 GB)."""
    import lightning.pytorch as pl

    from data_gen.shards import FolderLock, write_json_atomic
    from dd.checkpoint import save_student
    from dd.continuous import check_loss_settings, student_class
    from dd.continuous_distill import ContinuousDistillModule
    from dd.data import (
        finished_manifest,
        load_pairs,
        manifest_identity,
        manifest_sampling,
        split_heldout,
        split_sizes,
    )
    from dd.distill import DistillModule, PairDataModule
    from dd.losses import build_perceptual, cached_teacher_log_probs
    from dd.mapped_pairs import check_parent_exists
    from dd.metrics.digits import DigitsPerceptual
    from dd.teacher_spec import load_teacher
    from teachers.protocol import ContinuousTeacher

    run = recipe.run
    if run.num_threads is not None:
        torch.set_num_threads(run.num_threads)
    output = Path(run.output)
    check_resumable(recipe, output)
    # Built first: Lightning refuses a run section (an accelerator this machine lacks) before
    # anything is loaded or written. With no perceptual term dd_loss never runs the embedding
    # head (DistillModule's check), which DDP is told.
    trainer = make_trainer_of_recipe(run, output, recipe.loss.perceptual_weight == 0)
    last = output / "checkpoints" / LAST_CHECKPOINT
    done_steps = checkpoint_step(last) if last.is_file() else None
    finished = done_steps is not None and done_steps >= run.max_steps
    if finished and written_steps(output / STUDENT_FOLDER) == done_steps:
        # Fitting again would run no step, and Lightning's EMA callback would then leave the
        # *current* weights in the student. Nothing to do, nothing rewritten.
        log.info("%s is already at max_steps=%d; nothing to train", last, run.max_steps)
        return None
    teacher = load_teacher(recipe.teacher)
    manifest = finished_manifest(recipe.pairs.folder, teacher_fingerprint=teacher.fingerprint())
    num_train, num_heldout = split_sizes(
        manifest["counts"]["num_pairs"], recipe.pairs.num_heldout, recipe.pairs.num_train
    )
    check_loss_settings(teacher, recipe.loss)
    pl.seed_everything(run.seed, workers=True)  # the new layers' initialisation
    student = student_class(teacher)(
        teacher,
        recipe.student.timesteps,
        recipe.student.split_token,
        noise_logit_scale=recipe.student.noise_logit_scale,
        sampling_noise_logit_scale=recipe.student.sampling_noise_logit_scale,
        backbone_options=recipe.student.backbone_options,
    )
    continuous = isinstance(teacher, ContinuousTeacher)
    student.teacher_sampling = manifest_sampling(manifest, continuous=continuous)
    # A continuous-token teacher (#13) gets the embedding-only student and its system.
    system = ContinuousDistillModule if continuous else DistillModule
    system.check_settings(student, recipe.loss, student.teacher_sampling)  # the loss terms
    if recipe.pairs.memory_map is not None:
        check_parent_exists(Path(recipe.pairs.memory_map))
    initialised_from = initial_weights(
        student, recipe.student.init_from, output, resumed=done_steps is not None
    )
    # Without its weight the loss never calls the perceptual network (dd_loss: CE-only
    # training), so its file (LPIPS' VGG16) is not needed, unless the system logs it anyway.
    perceptual = None
    if system.logs_perceptual or recipe.loss.perceptual_weight > 0:
        perceptual = build_perceptual(recipe.loss)
        if isinstance(perceptual, DigitsPerceptual):
            perceptual.check_images_of(teacher)
    record = {
        "command": command,
        "seed": run.seed,
        "steps": done_steps,
        "init_from": initialised_from,
        "train_pairs": num_train,
        "heldout_pairs": num_heldout,
        "pairs_folder": recipe.pairs.folder,
        "fit_seconds": None,  # with segments: fit_segments
        "segments": [],
        "metrics": {},
    }
    if finished:  # stopped after its last checkpoint, before its student was written
        if trainer.is_global_zero:
            with FolderLock(output, "dd train"):
                write_finished_student(student, last, output, done_steps, recipe, record)
        return None
    # One run per output folder (rank 0 holds it: the other ranks write only identical files).
    lock = FolderLock(output, "dd train")
    if trainer.is_global_zero:
        lock.acquire()
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_text_if_changed(output / "recipe.yaml", resolved_yaml)
        pairs = load_pairs(
            recipe.pairs.folder,
            teacher_fingerprint=teacher.fingerprint(),
            memory_map=recipe.pairs.memory_map,
        )
        # Every DDP rank writes the same content; atomically, so a rank's resume check never
        # reads a half-written file.
        write_json_atomic(output / PAIRS_IDENTITY, manifest_identity(manifest))
        train_pairs, heldout = split_heldout(
            pairs, recipe.pairs.num_heldout, recipe.pairs.num_train
        )
        settings = (student, perceptual, recipe.optim, recipe.loss)
        if continuous:
            module = system(*settings, run.global_batch_size)
        else:
            sampling = student.teacher_sampling  # for the teacher-KL term
            module = system(*settings, run.global_batch_size, pair_sampling=sampling)
        targets = None
        if recipe.loss.cache_teacher_kl_targets:  # DistillModule refused it without the term
            targets = cached_teacher_log_probs(
                teacher, train_pairs.labels, train_pairs.tokens, sampling, progress=run.progress_bar
            )
        data = PairDataModule(
            train_pairs,
            heldout,
            global_batch_size=run.global_batch_size,
            num_timesteps=len(student.timesteps),
            seed=run.seed,
            teacher_log_probs=targets,
        )
        started = time.perf_counter()
        # weights_only: Lightning leaves it to torch's default, which an environment variable
        # (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) can turn into unpickling.
        resume = str(last) if last.is_file() else None
        with warnings.catch_warnings():
            # Expected: the frozen teacher and perceptual network stay in eval mode.
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            warnings.filterwarnings("ignore", message=LIGHTNING_PYTREE_WARNING)
            if resume is not None:  # the checkpoints there are this run's own, resumed from
                warnings.filterwarnings(
                    "ignore", message=".*Checkpoint directory .* exists and is not empty.*"
                )
            trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        if trainer.is_global_zero:  # EMA weights were copied into the student at the end of fit
            segment = {
                "steps": [done_steps or 0, trainer.global_step],
                "fit_seconds": round(time.perf_counter() - started, 1),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "devices": f"{trainer.world_size} x {trainer.strategy.root_device.type}",
            }
            record.update(
                fit_segments(output / STUDENT_FOLDER, done_steps, segment),
                steps=trainer.global_step,
                metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
            )
            folder = save_student(
                module.student, output / STUDENT_FOLDER, recipe.teacher, record=record
            )
            log.info("wrote the student to %s", folder)
    finally:
        lock.release()
    return trainer


def write_finished_student(student, last: Path, output: Path, done_steps, recipe, record) -> None:
    """A run stopped after its last checkpoint, before its student was written: the student
    from that checkpoint's EMA weights (the same bytes ``fit`` writes)."""
    from dd.checkpoint import save_student

    load_checkpoint_student(student, last)
    record.update(fit_segments(output / STUDENT_FOLDER, done_steps), written_from=str(last))
    folder = save_student(student, output / STUDENT_FOLDER, recipe.teacher, record=record)
    log.info("%s is at max_steps; wrote its student (EMA weights) to %s", last, folder)


def written_steps(folder: Path) -> int | None:
    """The steps of the student a run wrote (its card's record); None when it has none."""
    from dd.checkpoint import CARD_FILE, read_card

    return read_card(folder)["record"].get("steps") if (folder / CARD_FILE).is_file() else None


def fit_segments(
    folder: Path, resumed_from: int | None, new: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The card's ``segments``, one per fit of this run that wrote a card: when resuming
    (``resumed_from``, the checkpoint's step), those of the card a previous fit wrote in
    ``folder``, then ``new`` (this fit's, if it ran); and ``fit_seconds``, their total (None
    when there is none). A fit stopped before it wrote a card is in neither: the steps ranges
    show its gap. A card from before segments were recorded gives one, its first step None."""
    from dd.checkpoint import CARD_FILE, read_card

    segments = []
    if resumed_from is not None and (folder / CARD_FILE).is_file():
        before = read_card(folder)["record"]
        segments = before["segments"] if "segments" in before else [
            {"steps": [None, before.get("steps")], "fit_seconds": before.get("fit_seconds"),
             "machine": before.get("machine")}
        ]  # fmt: skip
    segments = [*segments, *([new] if new else [])]
    seconds = [s["fit_seconds"] for s in segments if s.get("fit_seconds") is not None]
    return {"segments": segments, "fit_seconds": round(sum(seconds), 1) if seconds else None}


def load_checkpoint_student(student, path: Path) -> None:
    """``student`` gets the EMA weights of a ``dd train`` checkpoint (its module's
    ``student.`` entries: the backbone, and the noise-logit scale when there is one; the
    frozen teacher's, which checkpoints of older runs still hold, are not the student's)."""
    from dd.distill import FROZEN_PREFIXES

    weights = {
        name.removeprefix("student.").removeprefix("backbone."): value
        for name, value in ema_state_dict(path).items()
        if name.startswith("student.") and not name.startswith(FROZEN_PREFIXES)
    }
    student.load_student_state_dict(weights)


def initial_weights(
    student, init_from: str | None, output: Path, *, resumed: bool
) -> dict[str, Any] | None:
    """``init_from``'s weights copied into ``student`` at a run's first start, what to record
    of them kept in the run folder (``INIT_RECORD``). A resumed run's checkpoint holds the
    weights, so the source is not read again: it may have moved or been retrained since."""
    if init_from is None:
        return None
    from data_gen.shards import write_json_atomic
    from dd.checkpoint import initialise_from

    kept = output / INIT_RECORD
    if resumed and kept.is_file():
        return json.loads(kept.read_text())
    record = initialise_from(student, init_from)  # runs started before INIT_RECORD: re-read
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(kept, record)
    return record


def write_text_if_changed(path: Path, text: str) -> None:
    """Every process of a run writes the same file: atomically (another rank's resume check
    never reads half of it), and not at all when it holds that text already."""
    from data_gen.shards import write_text_atomic

    if not (path.is_file() and path.read_text() == text):
        write_text_atomic(path, text)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe, resolved = parse_recipe(TrainRecipe, argv, prog="dd train")
    # Lightning's other refusals (its refusal of the run section is a ValueError by then)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from data_gen.shards import ShardError  # another run holding the output folder

    try:
        train(recipe, resolved, command=shlex.join(["dd", "train", *argv]))
    except (FileNotFoundError, ValueError, ShardError, MisconfigurationException) as error:
        print(f"dd train: {error}", file=sys.stderr)
        return 1
    return 0
