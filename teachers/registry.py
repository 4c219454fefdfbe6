"""Official-checkpoint teachers by family: a :class:`FamilySpec` -> a ``Teacher``.

Two ways to describe one (exactly one per spec):

- a size preset: ``FamilySpec(family="llamagen", preset="L", checkpoint="c2i_L_256.pt",
  tokenizer_checkpoint="vq_ds16_c2i.pt")``. LlamaGen presets are the GPT sizes (``B``,
  ``L-384``, ...; omitted = read from an official file name), the tokenizer preset ``VQ-16``
  (default) or ``VQ-8``; VAR presets are ``d16`` .. ``d30`` (and ``debug``), the VQVAE preset
  ``vae_ch160v4096z32`` (default);
- the official constructor arguments instead of a preset (the parity fixtures'
  ``README_<tag>.json``): ``official_args: {model: {...}, tokenizer: {...}}``.

This module knows the families only. A recipe's ``teacher`` section, which may also name a
shipped tiny teacher (``{tiny: llamagen-digits}``), is resolved one layer up, in
``dd.teacher_spec``. Relative checkpoint paths are taken relative to the working directory.
Anything unknown is a ``ValueError`` that lists what is known.
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
class FamilySpec:
    """A family teacher: its checkpoint files and either presets or the official arguments."""

    family: str
    checkpoint: str
    tokenizer_checkpoint: str
    preset: str | None = None
    tokenizer_preset: str | None = None
    official_args: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"teacher: unknown family {self.family!r}; known families: {list(FAMILIES)}"
            )
        if self.official_args is not None:
            if self.preset is not None or self.tokenizer_preset is not None:
                raise ValueError(self._presets_beside_official_args())
            unknown = set(self.official_args) - set(OFFICIAL_ARGS_SECTIONS)
            missing = set(OFFICIAL_ARGS_SECTIONS) - set(self.official_args)
            if unknown or missing:
                raise ValueError(
                    "teacher.official_args needs exactly the sections "
                    f"{list(OFFICIAL_ARGS_SECTIONS)} "
                    f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})"
                )

    def _presets_beside_official_args(self) -> str:
        # A preset recipe switched to official_args on the command line keeps its presets:
        # the user must null them, which nothing said.
        given = [name for name in ("preset", "tokenizer_preset") if getattr(self, name)]
        flags = " ".join(f"--teacher.{name} null" for name in given)
        return (
            f"teacher: give either presets or official_args, not both: add {flags} to use "
            f"official_args (or remove {' and '.join(given)} from the recipe)"
        )


def load_family_teacher(spec: FamilySpec, *, device: torch.device | str = "cpu") -> Teacher:
    """The frozen teacher a family spec names, on ``device``."""
    checkpoint, tokenizer = Path(spec.checkpoint), Path(spec.tokenizer_checkpoint)
    for role, path in (("checkpoint", checkpoint), ("tokenizer_checkpoint", tokenizer)):
        if not path.is_file():
            raise FileNotFoundError(f"teacher.{role}: file not found: {path.resolve()}")
    if spec.family == "llamagen":
        return _load_llamagen(spec, checkpoint, tokenizer, device)
    return _load_var(spec, checkpoint, tokenizer, device)


def _load_llamagen(spec: FamilySpec, checkpoint: Path, tokenizer: Path, device) -> Teacher:
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


def _load_var(spec: FamilySpec, checkpoint: Path, tokenizer: Path, device) -> Teacher:
    from teachers.var import VARConfig, VQVAEConfig, load_var_teacher

    if spec.official_args is not None:
        var_config = VARConfig.from_official_args(spec.official_args["model"])
        vae_config = VQVAEConfig.from_official_args(spec.official_args["tokenizer"])
    else:
        if spec.preset is None:
            raise ValueError(
                "teacher: family 'var' needs a 'preset' (d16, d20, d24, d30) or "
                "'official_args' ({model: {...}, tokenizer: {...}}, docs/teachers.md)"
            )
        var_config = spec.preset
        vae_config = spec.tokenizer_preset or DEFAULT_TOKENIZER_PRESETS["var"]
    return load_var_teacher(
        checkpoint, tokenizer, var_config=var_config, vae_config=vae_config, device=device
    )
