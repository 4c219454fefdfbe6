"""Shipped tiny teachers, loaded by name with the families' own loaders.

``teachers/weights/tiny.json`` (read through ``teachers.shipped``) holds one entry per shipped
model: its family, files, configs, the command and seed that reproduce it, and its training
record. ``load_tiny_teacher`` builds
the configs from that entry and calls ``load_llamagen_teacher`` / ``load_var_teacher``, so a
tiny teacher is loaded exactly like an official one (strictly, from safetensors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from teachers.protocol import SamplingConfig, Teacher
from teachers.shipped import WEIGHTS_DIR, check_entry_files, read_metadata

TINY_TEACHERS = ("llamagen-digits", "var-digits")
# Continuous-token teachers (teachers.protocol.ContinuousTeacher): FAR with the shortcut head,
# and the same backbone with a plain flow-matching head (the comparison of docs/far.md).
TINY_CONTINUOUS_TEACHERS = ("far-digits", "far-digits-flow")
TINY_FAMILIES = ("llamagen", "var", "far")

# Sampling settings for the shipped tiny teachers, chosen by FID on the digits evaluator
# (benchmarks/eval_tiny.py, table in docs/embedded_default.md). LlamaGen: its family default,
# the paper's constant CFG 2.0 (1.0 / 1.5 / 2.5 / 3.0 measured worse). VAR: the family's
# linear ramp and top-k / top-p, but CFG 0.5 (the paper's 2.0 collapses diversity on digits:
# FID 8.9 vs 4.2).
TINY_SAMPLING: dict[str, SamplingConfig] = {
    "llamagen-digits": SamplingConfig(cfg_scale=2.0, cfg_schedule="constant"),
    "var-digits": SamplingConfig(cfg_scale=0.5, cfg_schedule="linear", top_k=900, top_p=0.96),
}


def tiny_sampling(name: str) -> SamplingConfig:
    """The sampling settings tuned for a shipped tiny teacher (``TINY_SAMPLING``). Other
    teachers (the FAR ones, any ``dd train-teacher`` wrote) have none: their own
    ``default_sampling()``."""
    if name not in TINY_SAMPLING:  # "unknown tiny teacher" misled: load_tiny_teacher knows many
        raise ValueError(
            f"no tuned sampling settings for {name!r} (only for {sorted(TINY_SAMPLING)}): use "
            "the teacher's own, teacher.default_sampling()"
        )
    return TINY_SAMPLING[name]


def known_tiny_teachers(weights_dir: str | Path | None = None) -> list[str]:
    """The teachers ``load_tiny_teacher`` can load from ``weights_dir`` (default: the shipped
    ``teachers/weights``): the teacher entries of its ``tiny.json``, the shipped ones and any
    ``dd train-teacher`` wrote there."""
    return _teacher_names(read_metadata(weights_dir))


def _teacher_names(metadata: dict) -> list[str]:
    return sorted(name for name, entry in metadata.items() if entry.get("family") in TINY_FAMILIES)


def unknown_tiny_teacher(name: str, weights_dir: str | Path | None, known: list[str]) -> str:
    """Why ``name`` is not a tiny teacher of ``weights_dir``: the names that folder holds, or
    that it holds none; for the shipped folder, where a teacher trained elsewhere is named."""
    if weights_dir is None or Path(weights_dir).resolve() == WEIGHTS_DIR:
        return (
            f"unknown tiny teacher {name!r}; known: {known} (the shipped teachers/weights; for "
            "a teacher dd train-teacher wrote into another --out folder, give that folder: "
            "teacher.tiny_dir)"
        )
    if not known:
        held = "does not exist" if not Path(weights_dir).exists() else "holds no tiny teacher"
        return (
            f"unknown tiny teacher {name!r}: {weights_dir} {held} (tiny_dir is the --out "
            "folder of dd train-teacher, holding its tiny.json)"
        )
    return f"unknown tiny teacher {name!r} in {weights_dir}; known there: {known}"


def load_tiny_teacher(
    name: str, *, weights_dir: str | Path | None = None, device: torch.device | str = "cpu"
) -> Teacher:
    """A tiny teacher of ``weights_dir``'s ``tiny.json`` (default: the shipped
    ``teachers/weights``: ``"llamagen-digits"``, ``"var-digits"``, or the continuous-token
    ``"far-digits"`` / ``"far-digits-flow"``), frozen, eval mode. Files other than those the
    entry's ``sha256`` records (if it has any) are refused (``check_entry_files``)."""
    metadata = read_metadata(weights_dir)
    known = _teacher_names(metadata)  # tiny.json read once
    if name not in known:
        raise ValueError(unknown_tiny_teacher(name, weights_dir, known))
    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    entry = metadata[name]
    check_entry_files(name, entry, weights_dir)  # files of another run under this entry
    files, configs = entry["files"], entry["configs"]
    if entry["family"] == "llamagen":
        from teachers.llamagen import GPTConfig, VQConfig, load_llamagen_teacher

        return load_llamagen_teacher(
            weights_dir / files["gpt"],
            weights_dir / files["vq"],
            gpt_config=GPTConfig(**configs["gpt"]),
            vq_config=VQConfig(**configs["vq"]),
            device=device,
        )
    if entry["family"] == "far":
        from teachers.far import AutoencoderConfig, FARConfig, load_far_teacher

        return load_far_teacher(
            weights_dir / files["model"],
            weights_dir / files["autoencoder"],
            far_config=FARConfig(**configs["model"]),
            autoencoder_config=AutoencoderConfig(**configs["autoencoder"]),
            device=device,
        )
    from teachers.var import VARConfig, VQVAEConfig, load_var_teacher

    return load_var_teacher(
        weights_dir / files["var"],
        weights_dir / files["vae"],
        var_config=VARConfig(**configs["var"]),
        vae_config=VQVAEConfig(**configs["vae"]),
        device=device,
    )


def tiny_teacher_data(name: str, *, weights_dir: str | Path | None = None) -> str:
    """The data set a tiny teacher was trained on (its ``tiny.json`` entry's ``data``: the
    digits for the shipped ones, a ``--data-dir`` folder's name for ``dd train-teacher``'s)."""
    metadata = read_metadata(weights_dir)
    if name not in (known := _teacher_names(metadata)):
        raise ValueError(unknown_tiny_teacher(name, weights_dir, known))
    return metadata[name]["data"]
