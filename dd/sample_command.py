"""``dd sample --student DIR [--labels [0,1,...]] [--seed 0] [--methods ...] --output DIR``.

Writes every method's images as PNGs (``output/<method>/NNNN_classK.png``) and one labelled grid
(``output/grid.png``: a row per method, a column per sample). Sample ``i`` uses the same
per-sample randomness (``dd.sampling.randomness_at(seed_base(seed), i)``, what
``dd.sample`` draws with a generator seeded with ``seed``) in every method, so DD 1-step
and DD 2-step start from the same noise, and the teacher, skip-n and onestep* draw from the
same uniforms. Methods as in ``dd eval`` (``dd.evaluate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dd.compute import Precision, check_num_threads, resolve_device
from dd.config import parse_recipe
from dd.outputs import check_output
from dd.teacher_spec import TeacherSpec

OUTPUT_PURPOSE = "a folder for the PNGs"


@dataclass(frozen=True)
class SampleRecipe:
    """What to sample and where to write it."""

    student: str | None = None
    """A student checkpoint folder or a shipped student's name; null: give a teacher."""
    teacher: TeacherSpec | None = None
    """The teacher (``--teacher.help``). Without a student: the teacher and the baselines only;
    with one: what differs from its card's spec, field by field (as in dd eval)."""
    pairs: str | None = None
    """A pair folder of the teacher: onestep*'s token frequencies and the teacher's sampling
    settings; null: no onestep*."""
    methods: list[str] | None = None
    """Method specs as in ``dd eval`` (teacher, dd:K, dd+teacher, skip:N, onestep*); null:
    dd eval's defaults that the inputs allow."""
    labels: list[int] = field(default_factory=lambda: list(range(10)))
    """Class label of each sample, in order (a column of the grid each); at least one."""
    seed: int = 0
    """Seed of the per-sample randomness: sample i draws the same noise in every method."""
    output: str = "samples"
    """Folder of the PNGs (one folder per method) and of grid.png."""
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
        check_num_threads(self.num_threads, "num_threads")


def folder_name(method_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", method_name).strip("_")


def run_sample(recipe: SampleRecipe) -> Path:
    from dd.eval_command import build_setup, method_specs
    from dd.evaluate import generate, parse_methods
    from dd.grids import labelled_grid, save_pngs

    output = Path(recipe.output)
    # refused before anything is loaded: a file there failed after the first method's samples
    check_output(output, folder=True, purpose=OUTPUT_PURPOSE)
    if recipe.num_threads is not None:
        torch.set_num_threads(recipe.num_threads)
    device = resolve_device(recipe.device)  # refused before anything is loaded
    setup = build_setup(
        recipe.student, recipe.teacher, recipe.pairs, device=device, precision=recipe.precision
    )
    specs = method_specs(recipe.methods, setup.samplers)
    methods = parse_methods(specs, setup.samplers, preset_key=setup.preset_key)
    labels = torch.tensor(recipe.labels)
    rows = []
    for method in methods:
        images, _ = generate(
            method, setup.samplers, labels, seed=recipe.seed, batch_size=recipe.batch_size,
            progress=recipe.progress_bar,
        )  # fmt: skip
        save_pngs(output / folder_name(method.name), images, recipe.labels)
        rows.append((f"{method.name} ({method.steps} st.)", images))
    grid = output / "grid.png"
    labelled_grid(rows, recipe.labels).save(grid)
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
