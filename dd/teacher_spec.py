"""A recipe's ``teacher`` section: a shipped tiny teacher by name, or a family teacher by files.

Three ways to name a teacher (exactly one per spec):

- a tiny teacher: ``{tiny: llamagen-digits}`` -> ``teachers.tiny.load_tiny_teacher``, a
  shipped one (``teachers/weights``), or one ``dd train-teacher`` wrote into its own
  ``--out`` folder: ``{tiny: llamagen-mydata, tiny_dir: my_teachers}``;
- a family with official checkpoint files and a size preset:
  ``{family: llamagen, preset: L, checkpoint: c2i_L_256.pt, tokenizer_checkpoint:
  vq_ds16_c2i.pt}`` -> ``teachers.registry.load_family_teacher`` (presets listed there);
- a family with the official constructor arguments instead of a preset (the parity fixtures'
  ``README_<tag>.json``): ``official_args: {model: {...}, tokenizer: {...}}``.

This module sits above both ``teachers.registry`` (the families) and ``teachers.tiny`` (the
shipped tiny teachers), so the teachers' core never imports the tiny package. Anything unknown
is a ``ValueError`` that lists what is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from teachers.protocol import Teacher
from teachers.registry import FAMILIES, FamilySpec, load_family_teacher
from teachers.tiny.registry import known_tiny_teachers, load_tiny_teacher, unknown_tiny_teacher

FAMILY_FIELDS = ("preset", "tokenizer_preset", "checkpoint", "tokenizer_checkpoint")


@dataclass(frozen=True)
class TeacherSpec:
    """A recipe's ``teacher`` section (see the module docstring for the three forms)."""

    tiny: str | None = None
    """A tiny teacher by name (an entry of tiny.json, e.g. llamagen-digits); alone (with
    tiny_dir), or give family instead."""
    tiny_dir: str | None = None
    """The folder holding the tiny teacher's tiny.json and weights (the --out folder of
    dd train-teacher); null: the shipped teachers/weights. Only with tiny."""
    family: str | None = None
    """A family of official checkpoints: llamagen or var (``teachers.registry``)."""
    preset: str | None = None
    """The family's size preset: LlamaGen's GPT size (B, L-384, ...; null: read from an
    official file name), VAR's depth (d16 .. d30, or debug; required). Not with official_args."""
    tokenizer_preset: str | None = None
    """The tokenizer's preset: LlamaGen VQ-16 (null) or VQ-8; VAR vae_ch160v4096z32 (null).
    Not with official_args."""
    checkpoint: str | None = None
    """The AR model's official checkpoint file (family teachers; relative to the working
    directory)."""
    tokenizer_checkpoint: str | None = None
    """The tokenizer's (VQ) official checkpoint file (family teachers)."""
    official_args: dict[str, dict[str, Any]] | None = None
    """The official constructor arguments instead of presets, ``{model: {...}, tokenizer:
    {...}}`` (the parity fixtures' ``README_<tag>.json``)."""

    def __post_init__(self) -> None:
        if (self.tiny is None) == (self.family is None):
            raise ValueError(
                "teacher: give exactly one of 'tiny' (a tiny teacher of tiny.json: "
                f"{known_tiny_teachers()}) or 'family' ({list(FAMILIES)})"
            )
        if self.tiny is None and self.tiny_dir is not None:
            raise ValueError(
                "teacher: 'tiny_dir' is the folder of a tiny teacher (with 'tiny'); "
                f"a {self.family} teacher takes checkpoint files: remove it"
            )
        if self.tiny is not None:
            others = [name for name in FAMILY_FIELDS if getattr(self, name) is not None]
            if others or self.official_args is not None:
                raise ValueError(
                    "teacher: 'tiny' names a complete teacher; "
                    f"remove {others or ['official_args']}"
                )
            if self.tiny not in (known := known_tiny_teachers(self.tiny_dir)):
                why = unknown_tiny_teacher(self.tiny, self.tiny_dir, known)
                raise ValueError(f"teacher: {why}")
            return
        if self.family not in FAMILIES:
            raise ValueError(
                f"teacher: unknown family {self.family!r}; known families: {list(FAMILIES)}, "
                f"or a tiny teacher via 'tiny': {known_tiny_teachers()}"
            )
        if self.checkpoint is None or self.tokenizer_checkpoint is None:
            raise ValueError(
                f"teacher: family {self.family!r} needs 'checkpoint' (the AR model file) and "
                "'tokenizer_checkpoint' (the VQ file)"
            )
        self.family_spec()  # the family's own checks (presets vs official_args)

    def family_spec(self) -> FamilySpec:
        """The family part of this spec (a ``ValueError`` for a tiny spec)."""
        if self.family is None:
            raise ValueError(f"teacher: {self.tiny!r} is a tiny teacher, not a family spec")
        return FamilySpec(
            family=self.family,
            checkpoint=self.checkpoint,
            tokenizer_checkpoint=self.tokenizer_checkpoint,
            preset=self.preset,
            tokenizer_preset=self.tokenizer_preset,
            official_args=self.official_args,
        )


def load_teacher(spec: TeacherSpec, *, device: torch.device | str = "cpu") -> Teacher:
    """The frozen teacher a spec names, on ``device``."""
    if spec.tiny is not None:
        return load_tiny_teacher(spec.tiny, weights_dir=spec.tiny_dir, device=device)
    return load_family_teacher(spec.family_spec(), device=device)
