"""Every option of every recipe command (``dd.cli.RECIPE_COMMANDS``) says what it is in
``--help``, beyond jsonargparse's "(type: ..., default: ...)": the recipe dataclasses' attribute
docstrings, which ``dd.config`` has jsonargparse read."""

from __future__ import annotations

import dataclasses
import importlib
import signal
import typing

import pytest

import dd.config
from dd.cli import RECIPE_COMMANDS
from dd.cli import main as dd_main


def command_parser(module_name: str, monkeypatch, capsys):
    """(parser, schema) that the command builds for ``--help`` (the parser it really uses)."""
    built = []
    real = dd.config.recipe_parser

    def recording(schema, **kwargs):
        built.append((real(schema, **kwargs), schema))
        return built[-1][0]

    monkeypatch.setattr(dd.config, "recipe_parser", recording)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module_name).main(["--help"])
    assert exit_.value.code == 0 and len(built) == 1
    capsys.readouterr()
    return built[0]


def undocumented(parser) -> list[str]:
    """The leaf options (``--run.global_batch_size``, ...) with no help text of their own."""
    keys = parser.get_defaults().keys()  # the leaves, nested sections as dotted keys
    return [
        key for key in keys if not (parser._option_string_actions[f"--{key}"].help or "").strip()
    ]


def dataclasses_in(schema: type) -> set[type]:
    """The dataclasses reachable from ``schema``'s fields, also through ``X | None`` (whose
    options ``--field.help`` lists)."""
    found, todo = set(), [schema]
    while todo:
        hint = todo.pop()
        if dataclasses.is_dataclass(hint) and hint not in found:
            found.add(hint)
            todo.extend(typing.get_type_hints(hint).values())
        todo.extend(typing.get_args(hint))
    return found


@pytest.mark.parametrize("command", sorted(RECIPE_COMMANDS))
def test_every_option_has_help_text(command, monkeypatch, capsys):
    parser, schema = command_parser(RECIPE_COMMANDS[command][0], monkeypatch, capsys)
    assert undocumented(parser) == []
    for section in dataclasses_in(schema) - {schema}:
        assert undocumented(dd.config.recipe_parser(section, prog=section.__name__)) == [], section


@pytest.mark.parametrize(
    "argv, module, function",
    [
        (["eval", "--student", "s"], "dd.eval_command", "main"),  # a recipe command
        (["train-teacher", "--family", "classifier", "--out", "w"], "teachers.tiny.cli", "run"),
    ],
)
def test_ctrl_c_in_a_command_is_one_line(argv, module, function, monkeypatch, capsys):
    """Ctrl-C in ``dd eval``, ``dd sample`` or ``dd train-teacher`` printed the traceback of
    wherever the KeyboardInterrupt landed: now one line naming the command, exit 128 + SIGINT."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    assert dd_main(argv) == 128 + signal.SIGINT
    assert capsys.readouterr().err == f"dd {argv[0]}: interrupted (Ctrl-C)\n"
