"""Locating the official-parity fixtures (used by the teacher parity and contract tests).

The fixtures ship with the repository in ``tests/fixtures/official_parity`` (made by the
official code with ``tests/fixtures/make_official_parity.py``). ``DD_PARITY_DIR`` (a path,
relative ones taken from the repository root) and ``DD_PARITY_TAG`` (default ``tiny``) select
another fixture set of the same layout: ``README_<tag>.json`` with the official constructor
arguments, and ``<model>_<tag>.safetensors`` / ``<model>_<tag>_io.safetensors`` files. Every
shape comes from those files. A missing file fails the test, naming the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARITY_DIR = Path("tests") / "fixtures" / "official_parity"
DEFAULT_PARITY_TAG = "tiny"


def parity_dir() -> Path:
    """The fixture directory; a relative ``DD_PARITY_DIR`` is taken relative to the repo root."""
    path = Path(os.environ.get("DD_PARITY_DIR", str(DEFAULT_PARITY_DIR)))
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def parity_tag() -> str:
    return os.environ.get("DD_PARITY_TAG", DEFAULT_PARITY_TAG)


def fixture_path(name: str) -> Path:
    """``name`` may contain ``{tag}``, e.g. ``"llamagen_gpt_{tag}.safetensors"``."""
    path = parity_dir() / name.format(tag=parity_tag())
    if not path.is_file():
        pytest.fail(
            f"parity fixture not found: {path} (the repository ships them in "
            f"{DEFAULT_PARITY_DIR}; DD_PARITY_DIR / DD_PARITY_TAG select another set)",
            pytrace=False,
        )
    return path


def load_parity_json() -> dict:
    """The official constructor arguments of every fixture model (``README_<tag>.json``)."""
    with open(fixture_path("README_{tag}.json")) as handle:
        return json.load(handle)


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """All tensors of a fixture safetensors file (``{tag}`` in ``name`` is filled in)."""
    from safetensors.torch import load_file

    return load_file(str(fixture_path(name)), device="cpu")


def llamagen_fixture_spec():
    """A registry spec of the fixture LlamaGen teacher (GPT + VQ), built from the official args."""
    from dd.teacher_spec import TeacherSpec

    official = load_parity_json()
    gpt, vq = official["llamagen_gpt"], official["llamagen_vq"]
    return TeacherSpec(
        family="llamagen",
        checkpoint=str(fixture_path("llamagen_gpt_{tag}.safetensors")),
        tokenizer_checkpoint=str(fixture_path("llamagen_vq_{tag}.safetensors")),
        official_args={
            "model": {**gpt["official_args"], "cls_token_num": gpt["cls_token_num"]},
            "tokenizer": vq["official_args"],
        },
    )


def var_fixture_spec():
    """A registry spec of the fixture VAR teacher (VAR + VQVAE), built from the official args.

    The fixture records one argument dict for both models (``build_vae_var``'s); each config
    takes its own keys from it."""
    from dd.teacher_spec import TeacherSpec

    args = load_parity_json()["var"]["official_args"]
    return TeacherSpec(
        family="var",
        checkpoint=str(fixture_path("var_{tag}.safetensors")),
        tokenizer_checkpoint=str(fixture_path("var_vqvae_{tag}.safetensors")),
        official_args={"model": args, "tokenizer": args},
    )
