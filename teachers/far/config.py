"""Typed configs of the FAR family: the continuous tokenizer, FAR-Causal with its head, and the
shortcut training objective; presets as tables (``debug`` beside ``tiny``).

Derived values (token grid, number of tokens) are properties, never stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

HeadKind = Literal["shortcut", "flow"]
HEAD_KINDS: tuple[str, ...] = ("shortcut", "flow")


@dataclass(frozen=True)
class AutoencoderConfig:
    """A plain convolutional autoencoder; its latent grid is the token sequence.

    Each entry of ``widths`` is one stage that halves the resolution, so the token grid is
    ``resolution / 2**len(widths)`` per side and a token is the ``token_dim`` latent channels
    of one grid cell.
    """

    in_channels: int = 3
    resolution: int = 16
    widths: tuple[int, ...] = (16, 32)
    token_dim: int = 8
    norm_groups: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths:
            raise ValueError("AutoencoderConfig needs at least one stage (widths)")
        if self.resolution % 2 ** len(self.widths):
            raise ValueError(f"resolution {self.resolution} not divisible by 2^{len(self.widths)}")
        if self.token_dim < 1:
            raise ValueError(f"token_dim must be >= 1, got {self.token_dim}")

    @property
    def grid_size(self) -> int:
        return self.resolution // 2 ** len(self.widths)


@dataclass(frozen=True)
class FARConfig:
    """FAR-Causal: a causal transformer over ``grid_size**2`` continuous tokens in raster order,
    ``[class, x_1 .. x_{n-1}]`` in, one condition ``z_i`` per token out, and a per-token head.

    ``head_kind="shortcut"`` conditions the head on the step size ``d`` (FAR Sec. 3.3);
    ``"flow"`` is the same head without the step-size embedding, trained by flow matching only
    (FAR Table 4's comparison).
    """

    token_dim: int = 8
    grid_size: int = 4
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    head_kind: HeadKind = "shortcut"
    head_width: int = 96
    head_depth: int = 3  # residual AdaLN blocks (FAR: 6, or 3 in its Table 3/4 ablations)
    class_dropout_prob: float = 0.1  # label -> null class in training, for CFG
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.head_kind not in HEAD_KINDS:
            raise ValueError(f"head_kind must be one of {HEAD_KINDS}, got {self.head_kind!r}")
        counts = ("token_dim", "grid_size", "num_classes", "dim", "depth", "num_heads")
        for name in (*counts, "head_width", "head_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} not divisible by num_heads {self.num_heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class ShortcutSettings:
    """The shortcut objective (FAR Sec. 3.3; shortcut models, Frans et al. 2024, whose released
    code is github.com/kvfrans/shortcut-models).

    - ``head_batch_mul``: every condition ``z_i`` is used this many times per step with fresh
      noise and times (MAR's ``diffusion_batch_mul``), cheap because the head is small;
    - ``self_consistency_fraction``: the share of head rows trained by self-consistency
      (the released code uses 1/8 of the batch), the rest by flow matching at ``d = 0``;
    - ``num_step_levels``: ``2d`` is drawn from ``1, 1/2, ..., 2**-(levels-1)`` (powers of two;
      the smallest inner step ``2**-levels`` is queried as ``d = 0``, the flow field, as the
      released code queries its finest level with the flow-matching embedding);
    - ``ema_decay``: the EMA whose head computes the self-consistency targets (no gradient).
    """

    head_batch_mul: int = 2
    self_consistency_fraction: float = 0.125
    num_step_levels: int = 7
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        multiple = self.head_batch_mul
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"head_batch_mul must be an integer >= 1, got {multiple!r}")
        if not 0.0 <= self.self_consistency_fraction < 1.0:
            raise ValueError(
                f"self_consistency_fraction must be in [0, 1), got {self.self_consistency_fraction}"
            )
        if self.num_step_levels < 1:
            raise ValueError(f"num_step_levels must be >= 1, got {self.num_step_levels}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def min_step_size(self) -> float:
        """The finest inner step ``2**-levels``, queried as the flow field (``d = 0``)."""
        return 2.0**-self.num_step_levels

    def to_dict(self) -> dict:
        return asdict(self)


AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    "debug": AutoencoderConfig(widths=(8, 8), token_dim=4, norm_groups=4),
    "tiny": AutoencoderConfig(),
}
FAR_PRESETS: dict[str, FARConfig] = {
    "debug": FARConfig(token_dim=4, dim=32, depth=1, num_heads=2, head_width=32, head_depth=1),
    "tiny": FARConfig(),
}


def autoencoder_preset(name: str) -> AutoencoderConfig:
    if name not in AUTOENCODER_PRESETS:
        raise ValueError(
            f"unknown autoencoder preset {name!r}; known: {sorted(AUTOENCODER_PRESETS)}"
        )
    return AUTOENCODER_PRESETS[name]


def far_preset(name: str, **overrides) -> FARConfig:
    """A FAR preset, e.g. ``far_preset("tiny", head_kind="flow")``."""
    if name not in FAR_PRESETS:
        raise ValueError(f"unknown FAR preset {name!r}; known: {sorted(FAR_PRESETS)}")
    return FARConfig(**{**asdict(FAR_PRESETS[name]), **overrides})
