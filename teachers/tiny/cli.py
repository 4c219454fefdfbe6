"""``dd train-teacher``: train a tiny teacher (or the digits evaluator) on the bundled digits.

    dd train-teacher --family llamagen --out teachers/weights --seed 0
    dd train-teacher --family var --out teachers/weights --seed 0
    dd train-teacher --family classifier --out teachers/weights --seed 0
    dd train-teacher --family far --out teachers/weights --seed 0 [--head flow]

Writes the weights as safetensors into ``--out`` and records configs, the command, the seed,
the losses, the wall time, the peak RSS and each file's sha256 in ``<out>/tiny.json`` (the
entry ``load_tiny_teacher`` reads, which checks the sha256). Nothing is written until the run
has trained; the files then go through a staging folder and the entry comes last
(``install``), so an interrupted run never leaves new files under the old entry. Meanwhile the
run keeps each finished stage in ``<out>/.train-<entry>/`` (``teachers.tiny.resume``): the
same command rerun loads them and continues (byte-identical files; a stage stopped midway
starts over), other settings are refused naming the folder, and the folder goes after the
install. The classifier (one short stage) keeps no progress.
``--data-dir`` trains on a class-folder data set instead (``root/<class>/<image>``; written
under ``<family>-<folder name>``, the resolved folder's name). A run whose entry name or files
belong to another entry of ``--out`` (another data set, family or head) is refused before it
trains; re-training an entry from the same data replaces it. A recipe names a teacher of
another ``--out`` than ``teachers/weights`` with ``teacher: {tiny: <entry>, tiny_dir: <out>}``
(``load_tiny_teacher(name, weights_dir=out)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from dd.metrics.digits import CLASSIFIER_FILE, CLASSIFIER_NAME, class_accuracy
from teachers.data import DIGITS_DATA_NAME, ImageSet, load_digits_split, load_image_folder
from teachers.far.config import HEAD_KINDS, ShortcutSettings
from teachers.shipped import file_sha256, read_metadata, write_metadata_entry
from teachers.tiny.common import MAX_SEED, peak_rss_mb, save_weights
from teachers.tiny.presets import (
    TrainSettings,
    far_tiny_configs,
    llamagen_tiny_configs,
    var_tiny_configs,
)
from teachers.tiny.resume import NO_PROGRESS, RunProgress, progress_folder

log = logging.getLogger(__name__)

FAMILIES = ("llamagen", "var", "classifier", "far")
LOSS_TAIL = 50  # steps averaged for the reported final loss
_DEFAULTS = TrainSettings()
VAR_AR_BATCH_SIZE = 32  # 130 tokens per image: half LlamaGen's 64 images, about the same tokens


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a step count or batch size of 0 or less would train
    nothing and record a loss of 0)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def seed_int(text: str) -> int:
    """An argparse type: a seed the trainers can use, ``0 .. MAX_SEED`` (they seed torch with
    ``--seed`` plus small offsets, which must stay below 2**64: 2**64 - 1 trained the tokenizer,
    then ended in a traceback)."""
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Resume at stage boundaries: each finished stage (tokenizer, AR model, LlamaGen's decoder "
        "refit) is kept in <out>/.train-<entry>/, and rerunning the same command loads the "
        "finished stages and continues, writing the files an uninterrupted run writes; a stage "
        "stopped midway is retrained from its start (the shipped var-digits run: 26 min wall on "
        "a shared machine, all stages). A rerun with other settings (seed, steps, "
        "batch size, head, data, torch threads) is refused naming that folder: rerun the "
        "stopped command, or delete the folder to start over. The classifier keeps no progress. "
        "--dry-run says whether a run would resume. Stopped at any point, a run never leaves new "
        "weight files under the old tiny.json entry; the folder is removed after the install."
    )
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--out", required=True, type=Path, help="folder for weights + tiny.json")
    parser.add_argument(
        "--seed", type=seed_int, default=_DEFAULTS.seed, help=f"0 .. {MAX_SEED} (default 0)"
    )
    parser.add_argument(
        "--tokenizer-steps",
        type=positive_int,
        default=None,
        help=f"not classifier (default {_DEFAULTS.tokenizer_steps})",
    )
    parser.add_argument(
        "--ar-steps",
        type=positive_int,
        default=None,
        help=f"not classifier (default {_DEFAULTS.ar_steps})",
    )
    parser.add_argument(
        "--decoder-steps",
        type=positive_int,
        default=None,
        help="llamagen only: steps of the lighter decoder's refit on the frozen codebook "
        f"(default {_DEFAULTS.decoder_steps})",
    )
    parser.add_argument(
        "--ar-batch-size",
        type=positive_int,
        default=None,
        help=f"not classifier (default {_DEFAULTS.ar_batch_size}; var {VAR_AR_BATCH_SIZE})",
    )
    parser.add_argument(
        "--classifier-steps", type=positive_int, default=None, help="classifier only"
    )
    parser.add_argument(
        "--head",
        choices=HEAD_KINDS,
        default=None,
        help=f"far only: the {HEAD_KINDS[0]} head (default), or the flow-matching head "
        "(saved as far-<data>-flow)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="class-folder data set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved configs and settings, exit"
    )


# The family-specific flags (argparse dest -> the families that use it) and the value a flag
# left out stands for. --seed, --threads and --data-dir apply to every family.
FAMILY_FLAGS: dict[str, tuple[str, ...]] = {
    "tokenizer_steps": ("llamagen", "var", "far"),
    "ar_steps": ("llamagen", "var", "far"),
    "decoder_steps": ("llamagen",),
    "ar_batch_size": ("llamagen", "var", "far"),
    "classifier_steps": ("classifier",),
    "head": ("far",),
}
FLAG_DEFAULTS = {
    "tokenizer_steps": _DEFAULTS.tokenizer_steps,
    "ar_steps": _DEFAULTS.ar_steps,
    "decoder_steps": _DEFAULTS.decoder_steps,
    "head": HEAD_KINDS[0],
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_family_flags(args: argparse.Namespace) -> None:
    """Refuse a flag the family does not use (it was ignored, yet recorded in the entry's
    command), then fill in the defaults of the flags left out."""
    for dest, families in FAMILY_FLAGS.items():
        if getattr(args, dest) is not None and args.family not in families:
            used = [_flag(d) for d, f in FAMILY_FLAGS.items() if args.family in f]
            raise ValueError(
                f"{_flag(dest)} does not apply to --family {args.family} (its flags: "
                f"{', '.join(used)}); leave it out"
            )
    for dest, default in FLAG_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)


def _settings(args: argparse.Namespace) -> TrainSettings:
    overrides = {
        "seed": args.seed,
        "tokenizer_steps": args.tokenizer_steps,
        "ar_steps": args.ar_steps,
        "decoder_steps": args.decoder_steps,
    }
    if args.ar_batch_size is not None:
        overrides["ar_batch_size"] = args.ar_batch_size
    elif args.family == "var":
        overrides["ar_batch_size"] = VAR_AR_BATCH_SIZE
    return dataclasses.replace(_DEFAULTS, **overrides)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (non-default options included)."""
    parts = ["dd train-teacher", f"--family {args.family}", f"--out {args.out}"]
    parts.append(f"--seed {args.seed}")
    for flag, value, default in (
        ("--tokenizer-steps", args.tokenizer_steps, _DEFAULTS.tokenizer_steps),
        ("--ar-steps", args.ar_steps, _DEFAULTS.ar_steps),
        ("--decoder-steps", args.decoder_steps, _DEFAULTS.decoder_steps),
        ("--ar-batch-size", args.ar_batch_size, None),
        ("--classifier-steps", args.classifier_steps, None),
        ("--head", args.head, HEAD_KINDS[0]),
        ("--threads", args.threads, None),
        ("--data-dir", args.data_dir, None),
    ):
        if value != default:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def prepare_out(out: Path, *, create: bool) -> None:
    """Check that ``--out`` is (or can be made) a writable folder, and make it unless a dry run
    (which checks that its nearest existing parent is a writable folder): before any training,
    as a file there ended the whole run in ``FileExistsError`` at the first save."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: give a folder for the weights")
    if not create and not out.exists():  # the dry run: could the real run make it?
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir():
            raise ValueError(f"--out {out}: cannot make the folder ({parent} is a file)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"--out {out}: cannot make the folder ({parent} is not writable)")
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--out {out}: cannot make the folder ({error})") from error
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the folder is not writable")


def data_name_of(data_dir: Path | None) -> str:
    """The name a run's entry and files take from its data: ``digits`` for the bundled digits,
    else the name of the ``--data-dir`` folder itself (resolved: ``.`` or ``a/b/..`` named the
    entry ``<family>-`` or ``<family>-..``)."""
    if data_dir is None:
        return DIGITS_DATA_NAME
    name = data_dir.resolve().name
    if not name:
        raise ValueError(
            f"--data-dir {data_dir}: the folder has no name to name the entry after; "
            "put the class folders in a named folder"
        )
    if name == DIGITS_DATA_NAME:  # its files and tiny.json names would be the shipped ones
        raise ValueError(
            f"--data-dir {data_dir}: a folder named 'digits' would take the bundled data's "
            "names (and overwrite the shipped teachers or evaluator in --out); rename it"
        )
    return name


# The weight files of a family: entry "files" key -> the file name's ending.
FILE_PARTS: dict[str, dict[str, str]] = {
    "llamagen": {"gpt": "gpt", "vq": "vq"},
    "var": {"var": "var", "vae": "vae"},
    "far": {"model": "model", "autoencoder": "ae"},
}


def file_stem(name: str) -> str:
    """The start of an entry's file names: the name with ``-`` as ``_`` (``llamagen-digits`` ->
    ``llamagen_digits_gpt.safetensors``), or the name itself if it has a ``_``: ``my-set`` and
    ``my_set`` both became ``my_set``, so two entries shared (and overwrote) their files. One
    to one: every entry name has a ``-`` (``<family>-``), so a kept name never equals a
    replaced one, which has none."""
    return name if "_" in name else name.replace("-", "_")


def entry_and_files(family: str, data_name: str, head: str) -> tuple[str, dict[str, str]]:
    """The ``tiny.json`` entry name of a run and the weight files it writes (key -> name)."""
    if family == "classifier":
        if data_name == DIGITS_DATA_NAME:
            return CLASSIFIER_NAME, {"classifier": CLASSIFIER_FILE}
        name = f"classifier-{data_name}"
        return name, {"classifier": f"{name}.safetensors"}
    name = f"{family}-{data_name}" + ("-flow" if family == "far" and head == "flow" else "")
    stem = file_stem(name)
    return name, {key: f"{stem}_{end}.safetensors" for key, end in FILE_PARTS[family].items()}


def trained_as(family: str | None, data: str | None, head: str | None) -> str:
    """What a run trains, or an entry was trained as: family, data and (FAR) head."""
    return f"family {family}, data {data!r}" + (f", head {head}" if family == "far" else "")


def _recorded_as(entry: dict) -> str:
    head = entry.get("configs", {}).get("model", {}).get("head_kind")
    return trained_as(entry.get("family"), entry.get("data"), head)


def check_clashes(out: Path, name: str, files: dict[str, str], run_as: str) -> None:
    """Refuse a run (trained as ``run_as``) whose entry name or files belong to another entry
    of ``out/tiny.json`` (another data set, family or head), before it trains: names come from
    the data folder's name, so ``far --data-dir x/digits-flow`` was ``far-digits-flow`` and
    replaced the shipped flow-head teacher. Re-training an entry from the same data (same
    family and head) replaces it, as before."""
    metadata = read_metadata(out)
    fix = "rename the data folder or use another --out"
    if name in metadata and _recorded_as(metadata[name]) != run_as:
        raise ValueError(
            f"--out {out} already holds {name!r} ({_recorded_as(metadata[name])}); this run "
            f"({run_as}) would replace it: {fix}"
        )
    for other, other_entry in sorted(metadata.items()):
        shared = sorted(set(files.values()) & set(other_entry.get("files", {}).values()))
        if other != name and shared:
            raise ValueError(
                f"--out {out}: {shared[0]} belongs to the entry {other!r}; this run ({name!r}) "
                f"would overwrite it: {fix}"
            )


def _load_data(args: argparse.Namespace) -> tuple[ImageSet, ImageSet | None]:
    if args.data_dir is None:
        return load_digits_split("train"), load_digits_split("heldout")
    return load_image_folder(args.data_dir), None


def _tail(losses: list[float]) -> float:
    tail = losses[-LOSS_TAIL:]
    return sum(tail) / max(1, len(tail))


def _environment(args: argparse.Namespace) -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def _train_far(
    args, settings, train, heldout, progress, entry, stages
) -> dict[str, torch.nn.Module]:
    """The FAR branch of ``run``: tokenizer + FAR-Causal with the ``--head`` head; the modules
    to save by file key."""
    from teachers.tiny.train_far import far_settings_record, train_far

    far_config, ae_config = far_tiny_configs(train.num_classes, head_kind=args.head)
    shortcut = ShortcutSettings()
    model, autoencoder, record = train_far(
        train,
        far_config,
        ae_config,
        settings,
        shortcut,
        heldout=heldout,
        progress=progress,
        stages=NO_PROGRESS if stages is None else stages,
    )
    entry["configs"] = {
        "model": dataclasses.asdict(far_config),
        "autoencoder": dataclasses.asdict(ae_config),
    }
    entry["settings"] = far_settings_record(settings, shortcut)
    entry["record"] = {
        part: {"final_loss": _tail(rec.pop("losses")), **rec} for part, rec in record.items()
    }
    return {"model": model, "autoencoder": autoencoder}


def install(out: Path, name: str, files: dict[str, str], modules: dict, entry: dict) -> Path:
    """Write a run's weight files and ``tiny.json`` entry into ``out`` so that no interruption
    leaves new and old files under one entry (a re-train killed between two saves left the new
    GPT beside the old VQ under the old entry, which loaded without a word): the files are
    saved into a staging folder inside ``out`` (hidden, removed afterwards), their sha256
    recorded in the entry (``load_tiny_teacher`` checks them), the old entry removed, the files
    renamed into place and the new entry written last. Returns the path of ``tiny.json``."""
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}.", suffix=".partial"))
    try:
        for key, module in modules.items():
            save_weights(module, staging / files[key])
        entry["sha256"] = {key: file_sha256(staging / files[key]) for key in modules}
        write_metadata_entry(name, None, out)  # killed below: no entry, never a mixed one
        for key in modules:
            os.replace(staging / files[key], out / files[key])
        return write_metadata_entry(name, entry, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dry_run(
    args: argparse.Namespace,
    settings: TrainSettings,
    train: ImageSet,
    data_name: str,
    name: str,
    files: dict,
    stages: RunProgress | None,
) -> int:
    """Print what ``run`` would train: the data, the settings the family uses (as its entry
    records them) and its configs for the data's classes (the classifier uses its step count
    and seed only)."""
    num_classes = train.num_classes
    if args.family == "classifier":
        from teachers.tiny.train_classifier import CLASSIFIER_STEPS

        steps = CLASSIFIER_STEPS if args.classifier_steps is None else args.classifier_steps
        used, configs = {"classifier_steps": steps, "seed": args.seed}, ()
    elif args.family == "far":
        from teachers.tiny.train_far import far_settings_record

        used = far_settings_record(settings, ShortcutSettings())
    else:
        used = settings.record(args.family)
    if args.family != "classifier":
        configs = {
            "llamagen": llamagen_tiny_configs,
            "var": var_tiny_configs,
            "far": lambda n: (*far_tiny_configs(n, head_kind=args.head), ShortcutSettings()),
        }[args.family](num_classes)
    data = {"name": data_name, "images": len(train), "num_classes": num_classes}
    printed = {"command": command_line(args), "entry": name, "files": files, "data": data}
    printed["resume"] = _resume_plan(stages)
    print(json.dumps({**printed, "settings": used}, indent=2))
    for config in configs:
        print(config)
    return 0


def _resume_plan(stages: RunProgress | None) -> str:
    """What the dry run says of resuming: from which folder, after which stages, or not."""
    if stages is None:
        return "no: the classifier keeps no progress"
    if not stages.finished():
        return f"no: {stages.folder} holds no finished stage, the run starts from the beginning"
    return f"yes: from {stages.folder}, after {', '.join(stages.finished())}"


def run_key(args: argparse.Namespace, settings: TrainSettings, train: ImageSet) -> dict:
    """Everything a run's weights depend on (the data's content too, and the torch version
    and thread count, which change float results): a rerun resumes a stopped run only if all
    of it is equal."""
    data = hashlib.sha256(train.images.contiguous().numpy().tobytes())
    data.update(train.labels.contiguous().numpy().tobytes())
    return {
        "family": args.family,
        "head": args.head,
        "data_dir": None if args.data_dir is None else str(args.data_dir.resolve()),
        "data_sha256": data.hexdigest(),
        "class_names": list(train.class_names),
        "settings": settings.to_dict(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _open_progress(args, settings: TrainSettings, train: ImageSet) -> RunProgress:
    name, _ = entry_and_files(args.family, data_name_of(args.data_dir), args.head)
    return RunProgress(progress_folder(args.out, name), run_key(args, settings, train))


def _refuse(error: Exception) -> int:
    """An input refused before any training (one the user can fix, e.g. a missing or unreadable
    data folder) as one line on stderr and exit code 1, as ``dd generate`` / ``dd train``
    report theirs."""
    print(f"dd train-teacher: {error}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out: Path = args.out
    try:
        check_family_flags(args)
        data_name = data_name_of(args.data_dir)
        name, files = entry_and_files(args.family, data_name, args.head)
        check_clashes(out, name, files, trained_as(args.family, data_name, args.head))
        train, heldout = _load_data(args)  # the dry run checks the data too
        prepare_out(out, create=not args.dry_run)  # after the data: none made for bad data
    except (FileNotFoundError, ValueError) as error:  # one line, exit code 1: as dd generate
        return _refuse(error)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    progress = not args.no_progress
    try:  # the classifier, one short stage, keeps no progress
        stages = None if args.family == "classifier" else _open_progress(args, settings, train)
    except ValueError as error:  # a stopped run of other settings: one line, exit code 1
        return _refuse(error)
    if args.dry_run:
        return _dry_run(args, settings, train, data_name, name, files, stages)
    if stages is not None and stages.finished():
        log.info("%s: resuming after %s", stages.folder, ", ".join(stages.finished()))
    start = time.perf_counter()
    entry: dict = {
        "family": args.family,
        "command": command_line(args),
        "seed": args.seed,
        "data": data_name,
        "environment": _environment(args),
        "files": files,
    }
    if args.family == "classifier":
        from teachers.tiny.train_classifier import CLASSIFIER_STEPS, train_classifier

        steps = CLASSIFIER_STEPS if args.classifier_steps is None else args.classifier_steps
        model, losses = train_classifier(train, steps=steps, seed=args.seed, progress=progress)
        entry["configs"] = {"classifier": model.config.to_dict()}
        entry["record"] = {"steps": steps, "final_loss": _tail(losses)}
        if heldout is not None:
            entry["record"]["heldout_accuracy"] = class_accuracy(
                heldout.images_01(), heldout.labels, model
            )
        modules = {"classifier": model}
    elif args.family == "far":
        modules = _train_far(args, settings, train, heldout, progress, entry, stages)
    else:
        if args.family == "llamagen":
            from teachers.tiny.train_llamagen import train_llamagen as train_codebook_teacher

            ar_config, tokenizer_config = llamagen_tiny_configs(train.num_classes)
            ar_key, tokenizer_key = "gpt", "vq"  # the file keys
        else:
            from teachers.tiny.train_var import train_var as train_codebook_teacher

            ar_config, tokenizer_config = var_tiny_configs(train.num_classes)
            ar_key, tokenizer_key = "var", "vae"
        ar, tokenizer, record = train_codebook_teacher(
            train,
            ar_config,
            tokenizer_config,
            settings,
            heldout=heldout,
            progress=progress,
            stages=NO_PROGRESS if stages is None else stages,
        )
        configs = {
            ar_key: dataclasses.asdict(ar_config),
            tokenizer_key: dataclasses.asdict(tokenizer_config),
        }
        modules = {ar_key: ar, tokenizer_key: tokenizer}
        entry["configs"] = configs
        entry["settings"] = settings.record(args.family)
        entry["record"] = {
            part: {"final_loss": _tail(rec.pop("losses")), **rec} for part, rec in record.items()
        }
    wall = time.perf_counter() - start if stages is None else stages.elapsed()
    entry["record"]["wall_seconds"] = round(wall, 1)
    entry["record"]["peak_rss_mb"] = round(peak_rss_mb(), 1)
    path = install(out, name, files, modules, entry)
    if stages is not None:  # installed: the progress is of no more use
        shutil.rmtree(stages.folder, ignore_errors=True)
    log.info("%s: wrote %s (%s)", name, path, json.dumps(entry["record"]))
    return 0
