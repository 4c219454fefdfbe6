"""The ``dd`` command line: one sub-command per stage.

Each sub-command lives in its own module and exposes ``add_arguments(parser)`` and
``run(args) -> int``; commands whose options come from typed recipes through jsonargparse
(``RECIPE_COMMANDS``) expose ``main(argv) -> int`` and parse their own arguments. This file
only routes. Unknown arguments are an error, never ignored.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"

# name -> (module, one-line help). Each stage module declares its own arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "train-teacher": ("teachers.tiny.cli", "train a tiny teacher or the evaluator on bundled data"),
    "verify-shards": (
        "data_gen.verify_command",
        "check a pair folder: checksums, and a sample of records re-mapped with the teacher",
    ),
}


# name -> (module, one-line help); the module's ``main(argv)`` parses with jsonargparse.
RECIPE_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "data_gen.generate_command",
        "stage 1: generate (noise, tokens, label) pair shards (resumable; --print_config)",
    ),
    "train": (
        "dd.train_command",
        "stage 2: distil a student from pair shards (Lightning; resumable; --print_config)",
    ),
    "eval": (
        "dd.eval_command",
        "FID, IS, precision/recall, class accuracy and seconds per image of every sampler",
    ),
    "sample": ("dd.sample_command", "PNGs and a labelled grid of every sampler, same seeds"),
    "demo": (
        "dd.demo",
        "the whole pipeline on the tiny teachers (llamagen, var, far): pairs, distil, sample, "
        "evaluate, report",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dd", description="Distilled Decoding for AR image models", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(
            name, help=help_text, description=help_text, allow_abbrev=False
        )
        command_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command_parser)
    for name, (_, help_text) in RECIPE_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def drop_lightning_advert() -> None:
    """Lightning advertises its cloud logger (litlogger) at every Trainer it builds, an INFO
    line of its rank-zero logger: dropped there; its other lines (devices, precision) stay."""
    logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER).addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return route(argv)
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever it landed
        command = argv[0] if argv and not argv[0].startswith("-") else ""
        print(f"dd{' ' + command if command else ''}: interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT


def route(argv: list[str]) -> int:
    drop_lightning_advert()
    if argv and argv[0] in RECIPE_COMMANDS:
        module_name = RECIPE_COMMANDS[argv[0]][0]
        return int(importlib.import_module(module_name).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
