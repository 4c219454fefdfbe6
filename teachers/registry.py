"""The one place that turns a recipe's teacher section into a :class:`teachers.protocol.Teacher`.

Three ways to name a teacher (exactly one per spec):

- a shipped tiny teacher by name: ``{tiny: llamagen-digits}`` -> ``load_tiny_teacher``;
- a family with official checkpoint files and a size preset:
  ``{family: llamagen, preset: L, checkpoint: c2i_L_256.pt, tokenizer_checkpoint:
  vq_ds16_c2i.pt}`` -> ``load_llamagen_teacher`` / ``load_var_teacher``. LlamaGen presets
  are the GPT sizes (``B``, ``L-384``, ...; omitted = read from an official file name), the
  tokenizer preset ``VQ-16`` (default) or ``VQ-8``; VAR presets are ``d16`` .. ``d30`` (and
  ``debug``), the VQVAE preset ``vae_ch160v4096z32`` (default);
- a family with the official constructor arguments instead of a preset (the parity fixtures'
  ``README_<tag>.json``): ``official_args: {model: {...}, tokenizer: {...}}``.

Relative checkpoint paths are taken relative to the working directory. Anything unknown is a
``ValueError`` that lists what is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from teachers.protocol import Teacher

FAMILIES: tuple[str, ...] = ("llamagen", "var")
DEFAULT_TOKENIZER_PRESETS = {"llamagen": "VQ-16", "var": "vae_ch160v4096z32"}
OFFICIAL_ARGS_SECTIONS = ("model", "tokenizer")


@dataclass(frozen=True)
class TeacherSpec:
    """A recipe's ``teacher`` section (see the module docstring for the three forms)."""

    tiny: str | None = None
    family: str | None = None
    preset: str | None = None
    tokenizer_preset: str | None = None
    checkpoint: str | None = None
    tokenizer_checkpoint: str | None = None
    official_args: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if (self.tiny is None) == (self.family is None):
            raise ValueError(
                "teacher: give exactly one of 'tiny' (a shipped tiny teacher: "
                f"{list(known_tiny_teachers())}) or 'family' ({list(FAMILIES)})"
            )
        if self.tiny is not None:
            others = [
                name
                for name in ("preset", "tokenizer_preset", "checkpoint", "tokenizer_checkpoint")
                if getattr(self, name) is not None
            ]
            if others or self.official_args is not None:
                raise ValueError(
                    "teacher: 'tiny' names a complete teacher; "
                    f"remove {others or ['official_args']}"
                )
            return
        if self.family not in FAMILIES:
            raise ValueError(
                f"teacher: unknown family {self.family!r}; known families: {list(FAMILIES)}, "
                f"or a shipped tiny teacher via 'tiny': {list(known_tiny_teachers())}"
            )
        if self.checkpoint is None or self.tokenizer_checkpoint is None:
            raise ValueError(
                f"teacher: family {self.family!r} needs 'checkpoint' (the AR model file) and "
                "'tokenizer_checkpoint' (the VQ file)"
            )
        if self.official_args is not None:
            if self.preset is not None or self.tokenizer_preset is not None:
                raise ValueError("teacher: give either presets or official_args, not both")
            unknown = set(self.official_args) - set(OFFICIAL_ARGS_SECTIONS)
            missing = set(OFFICIAL_ARGS_SECTIONS) - set(self.official_args)
            if unknown or missing:
                raise ValueError(
                    "teacher.official_args needs exactly the sections "
                    f"{list(OFFICIAL_ARGS_SECTIONS)} "
                    f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})"
                )


def known_tiny_teachers() -> tuple[str, ...]:
    try:
        from teachers.tiny.registry import TINY_TEACHERS
    except ImportError:
        return ()
    return tuple(TINY_TEACHERS)


def load_teacher(spec: TeacherSpec, *, device: torch.device | str = "cpu") -> Teacher:
    """The frozen teacher a spec names, on ``device``."""
    if spec.tiny is not None:
        try:
            from teachers.tiny.registry import load_tiny_teacher
        except ImportError as error:
            raise ValueError(
                f"teacher: tiny teacher {spec.tiny!r} requested, but no tiny teachers are "
                f"available in this installation ({error})"
            ) from error
        return load_tiny_teacher(spec.tiny, device=device)
    checkpoint, tokenizer = Path(spec.checkpoint), Path(spec.tokenizer_checkpoint)
    for role, path in (("checkpoint", checkpoint), ("tokenizer_checkpoint", tokenizer)):
        if not path.is_file():
            raise FileNotFoundError(f"teacher.{role}: file not found: {path.resolve()}")
    if spec.family == "llamagen":
        return _load_llamagen(spec, checkpoint, tokenizer, device)
    return _load_var(spec, checkpoint, tokenizer, device)


def _load_llamagen(spec: TeacherSpec, checkpoint: Path, tokenizer: Path, device) -> Teacher:
    from teachers.llamagen import GPTConfig, VQConfig, load_llamagen_teacher

    if spec.official_args is not None:
        model_args = dict(spec.official_args["model"])
        cls_token_num = int(model_args.pop("cls_token_num", 1))
        gpt_config = GPTConfig.from_official_args(model_args, cls_token_num=cls_token_num)
        vq_config = VQConfig.from_official_args(spec.official_args["tokenizer"])
    else:
        gpt_config = spec.preset  # None: the preset is read from an official file name
        vq_config = spec.tokenizer_preset or DEFAULT_TOKENIZER_PRESETS["llamagen"]
    return load_llamagen_teacher(
        checkpoint, tokenizer, gpt_config=gpt_config, vq_config=vq_config, device=device
    )


def _load_var(spec: TeacherSpec, checkpoint: Path, tokenizer: Path, device) -> Teacher:
    from teachers.var import VARConfig, VQVAEConfig, load_var_teacher

    if spec.official_args is not None:
        var_config = VARConfig.from_official_args(spec.official_args["model"])
        vae_config = VQVAEConfig.from_official_args(spec.official_args["tokenizer"])
    else:
        if spec.preset is None:
            raise ValueError("teacher: family 'var' needs a 'preset' (d16, d20, d24, d30)")
        var_config = spec.preset
        vae_config = spec.tokenizer_preset or DEFAULT_TOKENIZER_PRESETS["var"]
    return load_var_teacher(
        checkpoint, tokenizer, var_config=var_config, vae_config=vae_config, device=device
    )
