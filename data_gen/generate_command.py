"""``dd generate --recipe recipes/generate_<name>.yaml [--set key=value ...] [--dry-run]``."""

from __future__ import annotations

import argparse
import logging
import sys

from data_gen.config import GenerateRecipe
from data_gen.shards import ShardError, plan_shards
from dd.recipe import RecipeError, add_recipe_arguments, dump_yaml, load_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        recipe = load_recipe(GenerateRecipe, args.recipe, args.overrides)
    except (RecipeError, FileNotFoundError) as error:
        print(f"dd generate: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        shards = plan_shards(recipe.pairs.num_pairs, recipe.output.shard_size)
        print(dump_yaml(recipe), end="")
        print(
            f"# plan: {recipe.pairs.num_pairs} pairs in {len(shards)} shards of up to "
            f"{recipe.output.shard_size} -> {recipe.output.folder}\n"
            "# sampling fields left null take the teacher's default_sampling()"
        )
        return 0
    from data_gen.engine import run_generation  # Lightning is imported only for real runs

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run_generation(recipe)
    except (ShardError, ValueError, FileNotFoundError) as error:
        print(f"dd generate: {error}", file=sys.stderr)
        return 1
    if result.complete:
        print(f"complete: {result.num_shards} shards in {result.folder} (manifest.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m data_gen.generate_command`` (what Lightning's DDP launcher
    re-runs on every rank when a run is started this way)."""
    parser = argparse.ArgumentParser(prog="dd generate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
