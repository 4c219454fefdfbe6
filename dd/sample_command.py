"""``dd sample --student DIR [--labels [0,1,...]] [--seed 0] [--methods ...] --output DIR``.

Writes every method's images as PNGs (``output/<method>/NNNN_classK.png``) and one labelled grid
(``output/grid.png``: a row per method, a column per sample). Sample ``i`` uses the same
per-sample randomness (``dd.sampling.randomness_at(seed_base(seed), i)``, what
``dd.sample`` draws with a generator seeded with ``seed``) in every method, so DD 1-step
and DD 2-step start from the same noise, and the teacher, skip-n and onestep* draw from the
same uniforms. Methods as in ``dd eval`` (``dd.evaluate``).

``output/samples.json`` records what the folder holds (the student, teacher, methods and their
folders, labels, seed, batch size, device, precision, sampling settings; ``complete`` once the
grid is written). A folder holding anything else is refused before any model loads: the PNGs
of two runs (other seeds, other labels) mixed in one method folder, and the folders of methods
no longer asked for stayed beside a grid that did not show them. With ``overwrite`` an earlier
dd sample's files (exactly those its record names) are removed first.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dd.compute import Precision, check_num_threads, resolve_device
from dd.config import parse_recipe
from dd.outputs import check_output
from dd.teacher_spec import TeacherSpec

OUTPUT_PURPOSE = "a folder for the PNGs"
RECORD_NAME = "samples.json"
GRID_NAME = "grid.png"


@dataclass(frozen=True)
class SampleRecipe:
    """What to sample and where to write it."""

    student: str | None = None
    """A student checkpoint folder or a shipped student's name; null: give a teacher."""
    teacher: TeacherSpec | None = None
    """The teacher (``--teacher.help``). Without a student: the teacher and the baselines only;
    with one: what differs from its card's spec, field by field (as in dd eval)."""
    pairs: str | None = None
    """A pair folder of the teacher: the teacher's sampling settings and onestep*'s token
    frequencies (read only when onestep* is among the methods); null: no onestep*."""
    methods: list[str] | None = None
    """Method specs as in ``dd eval`` (teacher, dd:K, dd+teacher, skip:N, onestep*); null:
    dd eval's defaults that the inputs allow."""
    labels: list[int] = field(default_factory=lambda: list(range(10)))
    """Class label of each sample, in order (a column of the grid each); at least one."""
    seed: int = 0
    """Seed of the per-sample randomness: sample i draws the same noise in every method."""
    output: str = "samples"
    """Folder of the PNGs (one folder per method), grid.png and samples.json (what it holds):
    new or empty, or with overwrite one that an earlier dd sample wrote."""
    overwrite: bool = False
    """Replace an earlier dd sample's files in output (those its samples.json names; nothing
    else). Without it such a folder is refused; a folder holding anything else always is."""
    image_size: int | None = None
    """Pixels (square) every PNG and the grid are resized to, as ``dd eval --image_size`` scores
    them (``dd.metrics.spaces.resize_for_scoring``: LlamaGen's official sampler saves its 384 px
    models' samples at 256 for the ImageNet 256 reference); null: as generated."""
    batch_size: int = 100
    """Images per batch, >= 1; the images are the same whatever it is (per-sample streams)."""
    num_threads: int | None = None
    """Intra-op CPU threads (``torch.set_num_threads``); null: torch's default."""
    device: str = "auto"
    """Where the models run: cpu, cuda, cuda:N, or auto (the first CUDA device when there is
    one, else the CPU)."""
    precision: Precision = "32-true"
    """Of every model call: 32-true, or bf16 / float16 autocast (bf16-mixed, 16-mixed);
    decoding stays float32. As in dd eval (``--precision`` there)."""
    progress_bar: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.student is None and self.teacher is None:
            raise ValueError("give a student (a checkpoint), a teacher (a spec), or both")
        if not self.labels:
            raise ValueError("labels: give at least one class label")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(
                f"image_size must be null (PNGs as generated) or a size in pixels >= 1, got "
                f"{self.image_size}"
            )
        check_num_threads(self.num_threads, "num_threads")


def folder_name(method_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", method_name).strip("_")


def png_names(labels: list[int]) -> list[str]:
    """The files ``dd.grids.save_pngs`` writes in each method's folder."""
    return [f"{index:04d}_class{label}.png" for index, label in enumerate(labels)]


def plain_name(name: object) -> bool:
    """A file name without any folder part (a record's names are joined to the output)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
    )


def read_record(path: Path) -> dict:
    """An earlier run's ``samples.json``, its names checked: files are removed by them."""
    try:
        record = json.loads(path.read_text())
        folders = [method["folder"] for method in record["methods"]]
        names = list(record["images"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a record of dd sample ({error!r})") from error
    if not all(plain_name(name) for name in [*folders, *names]):
        raise ValueError(f"{path} is not a record of dd sample (a name with a folder part)")
    return record


def unrecorded(output: Path, record: dict) -> Path | None:
    """The first file or folder in ``output`` that the record does not name, if any."""
    folders = {method["folder"] for method in record["methods"]}
    images = set(record["images"])
    for entry in sorted(output.iterdir()):
        if entry.name in (RECORD_NAME, GRID_NAME) and entry.is_file():
            continue
        if entry.name in folders and entry.is_dir() and not entry.is_symlink():
            for inner in sorted(entry.iterdir()):
                if not (inner.name in images and inner.is_file()):
                    return inner
            continue
        return entry
    return None


def earlier_run(output: Path, overwrite: bool) -> dict | None:
    """The record of the earlier dd sample whose files ``output`` holds (to remove them, with
    ``overwrite``); None: no folder or an empty one. Anything else is refused."""
    if not output.is_dir() or not any(output.iterdir()):
        return None
    if not (output / RECORD_NAME).is_file():
        raise ValueError(
            f"--output {output} is not empty and holds no {RECORD_NAME} of dd sample: give a "
            "new or empty folder"
        )
    record = read_record(output / RECORD_NAME)
    other = unrecorded(output, record)
    if other is not None:
        raise ValueError(
            f"--output {output} holds {other}, which its {RECORD_NAME} does not name: give a "
            "new or empty folder"
        )
    if not overwrite:
        raise ValueError(
            f"--output {output} holds the samples of an earlier dd sample ({RECORD_NAME}): "
            "give --overwrite true to replace them, or another folder"
        )
    return record


def remove_earlier(output: Path, record: dict) -> None:
    """Exactly the files an earlier run wrote (``earlier_run`` checked there are no others);
    its record last, so a removal stopped midway leaves a folder that is still refused or
    overwritten as a whole."""
    for method in record["methods"]:
        folder = output / method["folder"]
        if folder.is_dir():
            for name in record["images"]:
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
    (output / GRID_NAME).unlink(missing_ok=True)
    (output / RECORD_NAME).unlink()


def sample_record(recipe: SampleRecipe, setup, specs, methods, device, *, complete: bool) -> dict:
    return {
        "student": recipe.student,
        "teacher": setup.teacher_name,
        "pairs": recipe.pairs,
        "method_specs": list(specs),
        "methods": [
            {"name": method.name, "steps": method.steps, "folder": folder_name(method.name)}
            for method in methods
        ],
        "labels": list(recipe.labels),
        "images": png_names(recipe.labels),
        "seed": recipe.seed,
        "image_size": recipe.image_size,
        "batch_size": recipe.batch_size,
        "device": str(device),
        "precision": recipe.precision,
        "sampling": dataclasses.asdict(setup.samplers.sampling),
        "grid": GRID_NAME,
        "complete": complete,
    }


def run_sample(recipe: SampleRecipe) -> Path:
    from data_gen.shards import write_json_atomic
    from dd.eval_command import build_setup, method_specs
    from dd.evaluate import generate, parse_methods
    from dd.grids import labelled_grid, save_pngs
    from dd.metrics.spaces import resize_for_scoring

    output = Path(recipe.output)
    # refused before anything is loaded: a file there failed after the first method's samples,
    # and the files of an earlier run were mixed with this one's
    check_output(output, folder=True, purpose=OUTPUT_PURPOSE)
    earlier_run(output, recipe.overwrite)
    if recipe.num_threads is not None:
        torch.set_num_threads(recipe.num_threads)
    device = resolve_device(recipe.device)  # refused before anything is loaded
    setup = build_setup(
        recipe.student, recipe.teacher, recipe.pairs, methods=recipe.methods, device=device,
        precision=recipe.precision,
    )  # fmt: skip
    specs = method_specs(recipe.methods, setup.samplers)
    methods = parse_methods(specs, setup.samplers, preset_key=setup.preset_key)
    labels = torch.tensor(recipe.labels)
    earlier = earlier_run(output, recipe.overwrite)  # again: the folder may have changed since
    if earlier is not None:
        remove_earlier(output, earlier)
    output.mkdir(parents=True, exist_ok=True)
    record = output / RECORD_NAME
    # first: a run stopped midway leaves a folder that says what it holds
    write_json_atomic(record, sample_record(recipe, setup, specs, methods, device, complete=False))
    rows = []
    for method in methods:
        images, _ = generate(
            method, setup.samplers, labels, seed=recipe.seed, batch_size=recipe.batch_size,
            progress=recipe.progress_bar,
        )  # fmt: skip
        if recipe.image_size is not None:
            images = resize_for_scoring(images, recipe.image_size)
        save_pngs(output / folder_name(method.name), images, recipe.labels)
        rows.append((f"{method.name} ({method.steps} st.)", images))
    grid = output / GRID_NAME
    labelled_grid(rows, recipe.labels).save(grid)
    write_json_atomic(record, sample_record(recipe, setup, specs, methods, device, complete=True))
    return grid


def main(argv: list[str]) -> int:
    import sys

    from dd.eval_command import card_teacher_defaults

    recipe, _ = parse_recipe(
        SampleRecipe, argv, prog="dd sample", defaults_for=card_teacher_defaults
    )
    try:
        grid = run_sample(recipe)
    # OSError: files missing or unreadable, a full or read-only disk: one line
    except (OSError, ValueError) as error:
        print(f"dd sample: {error}", file=sys.stderr)
        return 1
    print(f"wrote {grid} and one PNG folder per method in {grid.parent}")
    return 0
