"""What the shard checks of ``dd.data.load_pairs`` cost: a load with them against the same load
without them, side by side in one run.

    PYTHONPATH=. python3 benchmarks/load_pairs_checks.py
    PYTHONPATH=. python3 benchmarks/load_pairs_checks.py --pairs /tmp/var20k

Without ``--pairs`` the script first makes a pair folder in a temporary directory (removed at
the end) with ``dd generate``'s engine and ``recipes/generate_tiny_var.yaml``, ``--num-pairs``
of them (shards of 1,000 as in the recipe). ``--pairs`` takes a finished folder instead, for
example the recipe's full 20,000 (``dd generate --recipe recipes/generate_tiny_var.yaml
--output.folder /tmp/var20k``). Three calls alternate round by round, after a warm-up round
that also brings the shards into the page cache:

- checked: ``load_pairs`` in memory, as ``dd train`` loads (each shard's size against the
  manifest before it is read, its sha256 over the bytes the tar reader reads and its record
  count after; every record's teacher fingerprint);
- unchecked: the same ``dd.data.fill_pairs`` with its record source swapped for one that reads
  each shard with the same tar reader and decoder and checks nothing (no size, sha256, count or
  fingerprint check), so the difference is the checks;
- sha256 alone: ``hashlib.sha256`` of every shard file, read in 1 MiB chunks.

Reported: CPU seconds (``time.process_time``, the whole process; one torch thread) and wall
seconds of each, medians over the rounds, and the per-round ratios checked / unchecked and
sha256 / unchecked (median and quartiles over the rounds). Results go to docs/pairs.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import webdataset as wds
from common import machine_description

import dd.data
from data_gen.config import GenerateRecipe
from data_gen.engine import run_generation
from data_gen.shards import decode_record
from dd.config import read_recipe_data, recipe_from_dict
from dd.evaluate import RatioSpread

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "generate_tiny_var.yaml"
CHUNK_BYTES = 2**20


def make_pairs(folder: Path, num_pairs: int) -> None:
    data = read_recipe_data(RECIPE)
    data["pairs"]["num_pairs"] = num_pairs
    data["output"]["folder"] = str(folder)
    data["run"]["progress_bar"] = False
    if not run_generation(recipe_from_dict(GenerateRecipe, data)).complete:
        raise RuntimeError(f"{folder}: the generation did not finish")


def unchecked_records(folder: Path, manifest: dict, teacher_fingerprint: str):
    """``dd.data._checked_records`` without any check: the shards the manifest lists, read
    with the tar reader and decoder ``read_checked_shard`` uses, straight from the file."""
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        with open(path, "rb") as handle:
            members = wds.tariterators.tar_file_iterator(handle)
            named = ({**member, "__url__": str(path)} for member in members)
            for sample in wds.tariterators.group_by_keys(named):
                yield decode_record(sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", help="a finished pair folder (default: make one)")
    parser.add_argument("--num-pairs", type=int, default=5000, help="pairs to make")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after a warm-up")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="load_pairs_checks_") as scratch:
        folder = Path(args.pairs) if args.pairs else Path(scratch) / "pairs"
        if not args.pairs:
            started = time.perf_counter()
            make_pairs(folder, args.num_pairs)
            made = f"made in {time.perf_counter() - started:.0f} s"
        else:
            made = "given"
        manifest = json.loads((folder / "manifest.json").read_text())
        fingerprint = manifest["teacher"]["fingerprint"]
        shard_files = [folder / entry["file"] for entry in manifest["shards"]]

        def checked():
            return dd.data.load_pairs(folder, teacher_fingerprint=fingerprint)

        def unchecked():
            with mock.patch.object(dd.data, "_checked_records", unchecked_records):
                return dd.data.fill_pairs(
                    folder,
                    teacher_fingerprint=fingerprint,
                    allocate=dd.data._allocate_in_memory,
                )

        def sha256_alone():
            for path in shard_files:
                hasher = hashlib.sha256()
                with open(path, "rb") as handle:
                    while chunk := handle.read(CHUNK_BYTES):
                        hasher.update(chunk)

        calls = {"checked": checked, "unchecked": unchecked, "sha256 alone": sha256_alone}
        with_checks, without = checked(), unchecked()
        same = all(
            torch.equal(getattr(with_checks, key), getattr(without, key))
            for key in ("index", "labels", "noise", "tokens")
        )
        del with_checks, without
        cpu = {name: [] for name in calls}
        wall = {name: [] for name in calls}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for name, call in calls.items():
                began_cpu, began_wall = time.process_time(), time.perf_counter()
                call()
                if round_:
                    cpu[name].append(time.process_time() - began_cpu)
                    wall[name].append(time.perf_counter() - began_wall)

    size = sum(entry["bytes"] for entry in manifest["shards"])
    print(
        f"{machine_description(1)}; {manifest['counts']['num_pairs']:,} pairs in "
        f"{len(shard_files)} shards, {size / 2**20:.1f} MiB ({made}); {args.repeats} rounds "
        f"after a warm-up round; checked and unchecked loads give equal tensors: {same}\n"
    )
    print("| load | CPU s, median | wall s, median |")
    print("|---|---|---|")
    for name in calls:
        print(
            f"| {name} | {statistics.median(cpu[name]):.3f} | {statistics.median(wall[name]):.3f} |"
        )
    print("\n| ratio, round by round | CPU: median (quartiles) | wall: median (quartiles) |")
    print("|---|---|---|")
    for name in ("checked", "sha256 alone"):
        cells = []
        for seconds in (cpu, wall):
            spread = RatioSpread.of_rounds(seconds[name], seconds["unchecked"])
            cells.append(f"{spread.median:.3f} ({spread.low:.3f}-{spread.high:.3f})")
        print(f"| {name} / unchecked | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
