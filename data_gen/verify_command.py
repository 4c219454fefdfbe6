"""``dd verify-shards <folder>``: checksums, then a sample of records re-mapped with the teacher."""

from __future__ import annotations

import argparse
import json
import sys

from data_gen.shards import ShardError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a pair folder written by `dd generate`")
    parser.add_argument(
        "--num-records",
        type=int,
        default=64,
        help="records to re-map with the teacher (0: checksums and manifest only)",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="which records are sampled")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--teacher-recipe",
        help="a recipe (generate or distill) whose teacher section replaces the manifest's "
        "(e.g. moved checkpoints)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from data_gen.verify import as_dict, verify_folder

    try:
        teacher_spec = None if args.teacher_recipe is None else recipe_teacher(args.teacher_recipe)
        report = verify_folder(
            args.folder,
            teacher_spec=teacher_spec,
            num_records=args.num_records,
            sample_seed=args.sample_seed,
            batch_size=args.batch_size,
            device=args.device,
        )
    except (ShardError, ValueError, FileNotFoundError) as error:
        print(f"dd verify-shards: {error}", file=sys.stderr)
        return 1
    print(json.dumps(as_dict(report), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


def recipe_teacher(path: str):
    """The ``teacher`` section of any recipe file (``dd generate``'s or ``dd train``'s), checked
    as a recipe's would be."""
    from dd.config import read_recipe_data, recipe_from_dict
    from dd.teacher_spec import TeacherSpec

    data = read_recipe_data(path)
    if not isinstance(data, dict) or not isinstance(data.get("teacher"), dict):
        raise ValueError(f"{path} has no teacher section")
    return recipe_from_dict(TeacherSpec, data["teacher"])
