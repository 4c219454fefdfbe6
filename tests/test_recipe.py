"""dd.recipe: typed YAML recipes, unknown keys refused by path, --set overrides, round trips;
every shipped generation recipe parses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from data_gen.config import GenerateRecipe
from dd.recipe import (
    RecipeError,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_recipe,
    parse_override,
    to_dict,
)

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("generate_*.yaml"))


@dataclass(frozen=True)
class Inner:
    size: int = 3
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    name: str | None = None
    dims: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    extra: dict[str, int] = field(default_factory=dict)


def test_defaults_nested_values_and_int_as_float():
    recipe = from_dict(Outer, {"inner": {"size": 7, "rate": 1, "dims": [4, 5, 6]}})
    assert recipe == Outer(inner=Inner(size=7, rate=1.0, dims=(4, 5, 6)))
    assert isinstance(recipe.inner.rate, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"sise": 1}}, "unknown key 'inner.sise'"),
        ({"flags": True}, "unknown key 'flags'"),
        ({"inner": {"size": "3"}}, "inner.size: expected an integer"),
        ({"inner": {"size": True}}, "inner.size: expected an integer"),
        ({"inner": {"mode": "c"}}, "inner.mode: 'c' is not one of"),
        ({"flag": "yes"}, "flag: expected true or false"),
        ({"inner": 3}, "inner: expected a mapping"),
        ({"extra": {"a": 1.5}}, "extra.a: expected an integer"),
    ],
)
def test_bad_recipes_name_the_key(data, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        from_dict(Outer, data)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(RecipeError) as error:
        from_dict(Outer, {"inner": {"sise": 1}})
    assert "['dims', 'mode', 'name', 'rate', 'size']" in str(error.value)


def test_overrides_are_typed_yaml_and_checked_against_the_schema():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    data = apply_overrides({"inner": {"size": 1}}, ["inner.rate=0.25", "flag=true"], Outer)
    assert from_dict(Outer, data) == Outer(inner=Inner(size=1, rate=0.25), flag=True)
    with pytest.raises(RecipeError, match="unknown key 'inner.sise'"):
        apply_overrides({}, ["inner.sise=2"], Outer)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("inner.size")


def test_round_trip_through_yaml(tmp_path):
    recipe = Outer(inner=Inner(size=9, mode="b", name="x", dims=(3,)), flag=True, extra={"k": 2})
    path = tmp_path / "r.yaml"
    path.write_text(dump_yaml(recipe))
    assert load_recipe(Outer, path) == recipe
    assert to_dict(recipe)["inner"]["dims"] == [3]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_generation_recipes_parse(path):
    recipe = load_recipe(GenerateRecipe, path)
    assert load_recipe(GenerateRecipe, path, ["pairs.seed=5"]).pairs.seed == 5
    assert from_dict(GenerateRecipe, to_dict(recipe)) == recipe


def test_there_are_shipped_generation_recipes():
    names = {p.name for p in RECIPES}
    assert "generate_fixture_llamagen.yaml" in names
    assert "generate_tiny_llamagen.yaml" in names


def test_generation_recipe_rejects_unknown_teacher_and_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher: {tiny: llamagen-digits}\npairs: {num_pair: 10}\n")
    with pytest.raises(RecipeError, match="unknown key 'pairs.num_pair'"):
        load_recipe(GenerateRecipe, path)
    path.write_text("teacher: {family: mar, checkpoint: a, tokenizer_checkpoint: b}\n")
    with pytest.raises(RecipeError, match=r"unknown family 'mar'; known families: \['llamagen'"):
        load_recipe(GenerateRecipe, path)
    path.write_text("teacher: {tiny: x, family: llamagen}\n")
    with pytest.raises(RecipeError, match="exactly one of 'tiny'"):
        load_recipe(GenerateRecipe, path)


def test_generate_dry_run_prints_the_resolved_recipe(capsys):
    from data_gen.generate_command import main

    path = str(RECIPES[0])
    assert main(["--recipe", path, "--dry-run", "--set", "pairs.seed=9"]) == 0
    out = capsys.readouterr().out
    assert "seed: 9" in out and "# plan:" in out
    assert main(["--recipe", path, "--dry-run", "--set", "pairs.sed=9"]) == 2
    assert "unknown key 'pairs.sed'" in capsys.readouterr().err
