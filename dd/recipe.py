"""Typed recipes: YAML files parsed into dataclasses, the project's one configuration mechanism.

A stage declares its recipe as (nested) dataclasses; this module turns a YAML mapping into an
instance of them and back:

- every key must be a field: an unknown key is an error that names its full path
  (``teacher.presett``) and lists the known keys of that section;
- values are checked against the field's type (``int``, ``float``, ``str``, ``bool``,
  ``Literal``, ``X | None``, ``list``/``tuple``/``dict`` of those, nested dataclasses, ``Any``);
- absent keys take the dataclass default, one source of truth for defaults;
- ``--set a.b=value`` overrides are applied to the mapping before parsing (the value is read
  as YAML, so ``3``, ``0.5``, ``null``, ``[1, 2]`` and ``true`` have their YAML types);
- the resolved recipe can be printed (a dry run) and saved beside the run's output.

The stage-specific schemas live with the stages (``data_gen.config``); this file is generic.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe that cannot be parsed: the message names the key path and what was expected."""


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against (and, for containers and dataclasses, built as) type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise RecipeError(f"{path}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(f"{path}: {value!r} matches none of {_type_name(tp)}")
    if value is None:
        raise RecipeError(f"{path}: null is not allowed (expected {_type_name(tp)})")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(f"{path}: {value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise RecipeError(f"{path}: expected a mapping (section {tp.__name__}), got {value!r}")
        return from_dict(tp, value, path=path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise RecipeError(f"{path}: expected {len(args)} items, got {len(value)}")
            items = [
                _convert(v, a, f"{path}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {
            _convert(k, key_tp, _join(path, k)): _convert(v, value_tp, _join(path, k))
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise RecipeError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    raise RecipeError(f"{path}: unsupported field type {tp!r} in the recipe schema")


def from_dict(schema: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass ``schema`` from a mapping; unknown keys and wrong types are errors."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        where = path or "the recipe's top level"
        raise RecipeError(
            f"unknown key {_join(path, unknown[0])!r} (in {where}); known keys: {sorted(fields)}"
        )
    kwargs = {name: _convert(data[name], hints[name], _join(path, name)) for name in data}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"missing required key {_join(path, missing[0])!r}")
    try:
        return schema(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, RecipeError):
            raise
        raise RecipeError(f"{path or 'recipe'}: {error}") from error


def to_dict(recipe: Any) -> Any:
    """Plain YAML-able data (dicts, lists, scalars) from a recipe instance."""
    if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
        return {f.name: to_dict(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    if isinstance(recipe, (list, tuple)):
        return [to_dict(v) for v in recipe]
    if isinstance(recipe, Mapping):
        return {k: to_dict(v) for k, v in recipe.items()}
    if isinstance(recipe, Path):
        return str(recipe)
    return recipe


def dump_yaml(recipe: Any) -> str:
    """The resolved recipe as YAML text (field order of the schema)."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=False)


def save_recipe(recipe: Any, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(dump_yaml(recipe))
    return path


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (``["a", "b"]``, value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. pairs.seed=3")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise RecipeError(f"override {text!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({error})") from error
    return parts, value


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], schema: type | None = None
) -> dict[str, Any]:
    """A copy of ``data`` with every ``a.b=value`` override set (sections created as needed).

    With ``schema``, an override whose path is not a field of the schema is refused here,
    naming the override (``from_dict`` would refuse it too, but without naming the flag).
    """
    result = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        if schema is not None:
            _check_path(schema, parts, text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(
                    f"override {text!r}: {'.'.join(parts[: depth + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return result


def _check_path(schema: type, parts: list[str], text: str) -> None:
    tp: Any = schema
    for depth, part in enumerate(parts):
        tp = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            names = {f.name for f in dataclasses.fields(tp)}
            if part not in names:
                where = ".".join(parts[:depth]) or "the top level"
                raise RecipeError(
                    f"override {text!r}: unknown key {'.'.join(parts[: depth + 1])!r}; "
                    f"known keys of {where}: {sorted(names)}"
                )
            tp = typing.get_type_hints(tp)[part]
        else:
            return  # inside a free-form mapping: any key


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        dataclass_options = [a for a in options if dataclasses.is_dataclass(a)]
        if dataclass_options:
            return dataclass_options[0]
    return tp


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    return data


def load_recipe(schema: type[T], path: str | Path | None, overrides: Iterable[str] = ()) -> T:
    """Read the YAML recipe at ``path`` (or start empty), apply overrides, build ``schema``."""
    data = read_yaml(path) if path is not None else {}
    try:
        return from_dict(schema, apply_overrides(data, overrides, schema))
    except RecipeError as error:
        raise RecipeError(f"{path or 'recipe'}: {error}") from error


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every recipe-driven command shares: --recipe, --set, --dry-run."""
    parser.add_argument("--recipe", required=True, help="YAML recipe file (see recipes/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set pairs.seed=3 (repeatable; value read as YAML)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved recipe and plan, run nothing"
    )
