"""Typed recipes through jsonargparse: the project's one configuration mechanism.

A stage declares its recipe as (nested) dataclasses; jsonargparse builds the command line from
their signatures (one source of truth for defaults, types and help):

- ``--recipe FILE`` (alias ``--config``) reads a YAML recipe; later flags override it with
  dotted keys (``--pairs.seed 3``, ``--run.devices 2``);
- an unknown key, in the file or on the command line, is an error that names it;
- ``--print_config`` prints the resolved recipe and exits (the dry run);
- ``--help`` describes every option by its field's attribute docstring (the string literal on
  the line after the field);
- the resolved recipe is saved beside a run's output (``dump_yaml``), and manifests store it as
  plain data that ``recipe_from_dict`` turns back into the dataclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

T = TypeVar("T")

# A field's description lives in one place, its attribute docstring; jsonargparse reads only the
# class docstring unless told to parse each class's source too, at every parser built: measured
# 4 to 16 ms more a parser (dd eval's, dd train's), lost in the 2 s start of dd eval --help
# (mostly importing torch).
set_parsing_settings(docstring_parse_attribute_docstrings=True)


def recipe_parser(schema: type, *, prog: str, description: str = "") -> ArgumentParser:
    """A parser whose options are the fields of ``schema`` (nested sections as dotted keys)."""
    # allow_abbrev=False: argparse would read a misspelt --pairs.num_pair as --pairs.num_pairs
    parser = ArgumentParser(
        prog=prog, description=description, exit_on_error=True, allow_abbrev=False
    )
    parser.add_argument("--recipe", "--config", action=ActionConfigFile, help="YAML recipe file")
    parser.add_class_arguments(schema, nested_key=None, fail_untyped=True)
    return parser


def _instantiate(parser: ArgumentParser, namespace, schema: type[T]) -> T:
    built = parser.instantiate(namespace)
    return schema(**{f.name: built[f.name] for f in dataclasses.fields(schema)})


PRINT_CONFIG = "--print_config"


def parse_recipe(
    schema: type[T],
    argv: Sequence[str],
    *,
    prog: str,
    defaults_for: Callable[[Namespace], dict[str, Any] | None] | None = None,
) -> tuple[T, str]:
    """(recipe, resolved YAML) from command-line arguments; exits with a message on errors.
    ``--print_config`` (the dry run) prints the resolved recipe and exits once the sections'
    own checks have passed (jsonargparse's action would print before them). ``defaults_for``:
    defaults that depend on what was given (a student's card spec under the ``--teacher.*``
    given beside it), under which the same arguments are parsed again."""
    parser = recipe_parser(schema, prog=prog, description=schema.__doc__ or "")
    argv = list(argv)
    dry_run = PRINT_CONFIG in argv
    arguments = [arg for arg in argv if arg != PRINT_CONFIG]
    namespace = parser.parse_args(arguments)
    if defaults_for is not None and (defaults := defaults_for(namespace)):
        parser.set_defaults(defaults)
        namespace = parser.parse_args(arguments)
    try:  # the sections' own checks (``__post_init__``) speak as parse errors
        recipe = _instantiate(parser, namespace, schema)
    except ValueError as error:
        parser.error(str(error))
    resolved = parser.dump(namespace, skip_unset=False)
    if dry_run:
        print(resolved, end="")
        raise SystemExit(0)
    return recipe, resolved


def recipe_from_dict(schema: type[T], data: Mapping[str, Any]) -> T:
    """A recipe (or one of its sections) from plain data, checked as a recipe file would be."""
    parser = recipe_parser(schema, prog=schema.__name__)
    parser.exit_on_error = False
    try:
        namespace = parser.parse_object(dict(data))
    except Exception as error:  # jsonargparse's ArgumentError: an unknown key or a bad value
        raise ValueError(f"{schema.__name__}: {error}") from error
    return _instantiate(parser, namespace, schema)


def read_recipe_data(path: str | Path) -> dict[str, Any]:
    """A recipe file's plain data; a missing file or bad YAML is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error


def read_recipe(schema: type[T], path: str | Path) -> T:
    return recipe_from_dict(schema, read_recipe_data(path))


def recipe_to_dict(recipe: Any) -> Any:
    """Plain YAML-able data (dicts, lists, scalars) from a recipe instance, in field order."""
    if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
        return {f.name: recipe_to_dict(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    if isinstance(recipe, (list, tuple)):
        return [recipe_to_dict(v) for v in recipe]
    if isinstance(recipe, Mapping):
        return {k: recipe_to_dict(v) for k, v in recipe.items()}
    if isinstance(recipe, Path):
        return str(recipe)
    return recipe


def dump_yaml(recipe: Any) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=False)
