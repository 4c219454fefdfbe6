"""``dd generate --recipe recipes/generate_<name>.yaml [--section.key value ...] [--print_config]``.

Stage 1. The recipe (``data_gen.config.GenerateRecipe``) is parsed by jsonargparse
(``dd.config``): dotted overrides (``--pairs.seed 3 --run.devices 2``), ``--print_config``
prints the resolved recipe and exits (the dry run), unknown keys are an error. Sampling fields
left null take the teacher's ``default_sampling()``.
"""

from __future__ import annotations

import logging
import sys

from data_gen.config import GenerateRecipe
from data_gen.shards import ShardError
from dd.config import parse_recipe


def main(argv: list[str] | None = None) -> int:
    """``dd generate`` and ``python -m data_gen.generate_command`` (what Lightning's DDP
    launcher re-runs on every rank when a run is started this way)."""
    recipe, _ = parse_recipe(
        GenerateRecipe, sys.argv[1:] if argv is None else argv, prog="dd generate"
    )
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from data_gen.engine import run_generation  # Lightning is imported only for real runs

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run_generation(recipe)
    # OSError: the output folder's file system (read-only, full, a file in the path), and
    # missing checkpoints; one line, as the refusals of the recipe and the folder (and of the
    # run section, a ValueError naming the CPU flags by then)
    except (ShardError, ValueError, OSError, MisconfigurationException) as error:
        print(f"dd generate: {error}", file=sys.stderr)
        return 1
    if result.complete and result.global_rank == 0:
        print(f"complete: {result.num_shards} shards in {result.folder} (manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
