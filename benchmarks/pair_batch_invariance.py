"""The same pairs at two batch sizes: is a record independent of the rows beside it?

    python3 benchmarks/pair_batch_invariance.py --recipe recipes/generate_tiny_far.yaml \
        --num-pairs 8 --batch-sizes 4 1

Runs ``dd generate``'s ``run_generation`` for ``--recipe`` twice into temporary folders, with
``--num-pairs`` pairs (one shard) at each batch size, and compares the records index by index:
labels and noise must be equal (they are drawn per index), and the tokens are compared as
stored. Codebook tokens: how many records differ. Continuous (FAR) tokens: the largest
absolute difference per record, min..max over the records (matrix products of another batch
size may sum in another order).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from data_gen.config import GenerateRecipe
from data_gen.engine import run_generation
from dd.config import read_recipe
from dd.data import load_pairs
from dd.teacher_spec import load_teacher


def generate(recipe: GenerateRecipe, folder: Path, num_pairs: int, batch_size: int):
    recipe = dataclasses.replace(
        recipe,
        pairs=dataclasses.replace(recipe.pairs, num_pairs=num_pairs),
        output=dataclasses.replace(recipe.output, folder=str(folder), shard_size=num_pairs),
        run=dataclasses.replace(
            recipe.run, batch_size=batch_size, accelerator="cpu", devices=1, progress_bar=False
        ),
    )
    if not run_generation(recipe).complete:
        raise RuntimeError(f"the run into {folder} did not complete")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/generate_tiny_far.yaml")
    parser.add_argument("--num-pairs", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[4, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = read_recipe(GenerateRecipe, args.recipe)
    fingerprint = load_teacher(recipe.teacher).fingerprint()
    with tempfile.TemporaryDirectory() as scratch:
        sets = []
        for batch_size in args.batch_sizes:
            folder = Path(scratch) / f"batch{batch_size}"
            generate(recipe, folder, args.num_pairs, batch_size)
            sets.append(load_pairs(folder, teacher_fingerprint=fingerprint))
    first, second = sets
    same_draws = torch.equal(first.labels, second.labels) and torch.equal(first.noise, second.noise)
    print(f"{args.recipe}: {args.num_pairs} pairs, batch {args.batch_sizes[0]} against "
          f"{args.batch_sizes[1]}; labels and noise equal: {same_draws}")  # fmt: skip
    if first.tokens.dtype.is_floating_point:
        per_record = (first.tokens - second.tokens).abs().flatten(1).amax(dim=1)
        print(f"tokens: largest |difference| per record {per_record.min():.1e}.."
              f"{per_record.max():.1e}")  # fmt: skip
    else:
        differ = (first.tokens != second.tokens).any(dim=1)
        print(f"tokens: {int(differ.sum())} of {len(differ)} records differ")


if __name__ == "__main__":
    main()
