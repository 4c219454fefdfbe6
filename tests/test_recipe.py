"""dd.config: typed recipes through jsonargparse (unknown keys refused by name, dotted
overrides, the dry run, round trips through plain data); every generation recipe parses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from data_gen.config import GenerateRecipe
from data_gen.generate_command import main as generate_main
from dd.config import dump_yaml, parse_recipe, read_recipe, recipe_from_dict, recipe_to_dict

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


def test_defaults_nested_values_and_int_as_float():
    recipe = recipe_from_dict(Outer, {"inner": {"size": 7, "rate": 1, "dims": [4, 5, 6]}})
    assert recipe == Outer(inner=Inner(size=7, rate=1.0, dims=(4, 5, 6)))
    assert isinstance(recipe.inner.rate, float)
    assert recipe_from_dict(Outer, recipe_to_dict(recipe)) == recipe


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"inner": {"sise": 1}}, "sise"),
        ({"flags": True}, "flags"),
        ({"inner": {"size": "three"}}, "size"),
        ({"inner": {"mode": "c"}}, "mode"),
    ],
)
def test_bad_recipes_name_the_key(data, named):
    with pytest.raises(ValueError, match=named):
        recipe_from_dict(Outer, data)


def test_command_line_overrides_and_refusals(capsys):
    recipe, resolved = parse_recipe(Outer, ["--inner.size", "9", "--flag", "true"], prog="t")
    assert recipe == Outer(inner=Inner(size=9), flag=True) and "size: 9" in resolved
    with pytest.raises(SystemExit):
        parse_recipe(Outer, ["--inner.sise", "9"], prog="t")
    assert "sise" in capsys.readouterr().err


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_generation_recipes_parse(path):
    recipe = read_recipe(GenerateRecipe, path)
    override, _ = parse_recipe(
        GenerateRecipe, ["--recipe", str(path), "--pairs.seed", "5"], prog="g"
    )
    assert override.pairs.seed == 5
    assert recipe_from_dict(GenerateRecipe, recipe_to_dict(recipe)) == recipe
    assert dump_yaml(recipe).startswith("teacher:")


def test_there_are_shipped_generation_recipes():
    names = {p.name for p in RECIPES}
    assert "generate_fixture_llamagen.yaml" in names
    assert "generate_tiny_llamagen.yaml" in names


def test_generation_recipe_rejects_unknown_teacher_and_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher: {tiny: llamagen-digits}\npairs: {num_pair: 10}\n")
    with pytest.raises(ValueError, match="num_pair"):
        read_recipe(GenerateRecipe, path)
    path.write_text("teacher: {family: mar, checkpoint: a, tokenizer_checkpoint: b}\n")
    with pytest.raises(ValueError, match=r"unknown family 'mar'; known families: \['llamagen'"):
        read_recipe(GenerateRecipe, path)
    path.write_text("teacher: {tiny: x, family: llamagen}\n")
    with pytest.raises(ValueError, match="exactly one of 'tiny'"):
        read_recipe(GenerateRecipe, path)


def test_generate_print_config_is_the_dry_run(capsys):
    path = str(RECIPES[0])
    with pytest.raises(SystemExit) as info:
        generate_main(["--recipe", path, "--pairs.seed", "9", "--print_config"])
    assert info.value.code == 0
    assert "seed: 9" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        generate_main(["--recipe", path, "--pairs.sed", "9"])
    assert info.value.code != 0 and "sed" in capsys.readouterr().err


def test_switching_a_preset_recipe_to_official_args_names_the_flags(capsys):
    """official_args over a preset recipe kept its presets and said only "not both": the
    refusal names the flags that null them, and with those flags the recipe parses."""
    argv = ["--recipe", str(RECIPES[0].parent / "generate_var_d16.yaml"), "--teacher.official_args",
            "{model: {depth: 2}, tokenizer: {ch: 32}}"]  # fmt: skip
    with pytest.raises(SystemExit):
        generate_main([*argv, "--print_config"])
    err = capsys.readouterr().err
    assert "add --teacher.preset null --teacher.tokenizer_preset null to use official_args" in err
    switched = [*argv, "--teacher.preset", "null", "--teacher.tokenizer_preset", "null"]
    recipe, _ = parse_recipe(GenerateRecipe, switched, prog="g")
    assert recipe.teacher.official_args == {"model": {"depth": 2}, "tokenizer": {"ch": 32}}


FIXTURE_RECIPES = {
    "var": ("generate_fixture_var", "distill_fixture_var"),
    "llamagen": ("generate_fixture_llamagen", "distill_fixture_llamagen"),
}


@pytest.mark.parametrize("family", FIXTURE_RECIPES)
def test_fixture_recipes_walk_the_pipeline_on_the_parity_teachers(family):
    """Pair and distillation recipes for both official-format fixtures (only LlamaGen's pair
    recipe existed): the fixture teacher of tests/parity.py (same fingerprint: VAR's one
    official dict split by model), CE only (no LPIPS file), on the CPU."""
    from dd.teacher_spec import load_teacher
    from dd.train_recipe import TrainRecipe
    from tests.parity import llamagen_fixture_spec, var_fixture_spec

    generate, distill = (RECIPES[0].parent / f"{name}.yaml" for name in FIXTURE_RECIPES[family])
    pairs = read_recipe(GenerateRecipe, generate)
    train, _ = parse_recipe(TrainRecipe, ["--recipe", str(distill)], prog="dd train")
    assert train.teacher == pairs.teacher
    root = RECIPES[0].parent.parent  # the recipes' paths are relative to the repository root
    teacher = load_teacher(
        dataclasses.replace(
            pairs.teacher,
            checkpoint=str(root / pairs.teacher.checkpoint),
            tokenizer_checkpoint=str(root / pairs.teacher.tokenizer_checkpoint),
        )
    )
    expected = {"var": var_fixture_spec, "llamagen": llamagen_fixture_spec}[family]()
    assert teacher.fingerprint() == load_teacher(expected).fingerprint()
    assert train.pairs.folder == pairs.output.folder and train.pairs.memory_map is None
    assert train.loss.perceptual_weight == 0 and train.run.accelerator == "cpu"
    assert train.student.split_token == teacher.geometry.num_tokens


def test_fixture_var_recipe_makes_pairs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(RECIPES[0].parent.parent)  # its paths are relative to the repository root
    argv = ["--recipe", "recipes/generate_fixture_var.yaml", "--pairs.num_pairs", "4",
            "--output.shard_size", "4", "--run.batch_size", "4", "--run.progress_bar", "false",
            "--output.folder", str(tmp_path / "pairs")]  # fmt: skip
    assert generate_main(argv) == 0
    assert f"complete: 1 shards in {tmp_path / 'pairs'}" in capsys.readouterr().out
