"""Typed configs of VAR and its multi-scale VQVAE, with named presets (docs/teachers.md).

Only inputs are stored; derived values (token count, scale ranges, image size) are
properties. ``from_official_args`` takes the keyword arguments of the official constructors
(``VAR(...)``, ``VQVAE(...)``, ``build_vae_var(...)``): the parity fixtures record them, so a
model built from a fixture's ``README_<tag>.json`` has the fixture's exact shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# VAR at 256 px: 10 scales, 680 tokens.
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
WIDTH_PER_DEPTH = 64  # build_vae_var: width = 64 * depth, heads = depth

# Official keyword arguments that only matter for training or for kernels, not for the
# weights or the inference numbers: accepted and ignored so official arg dicts parse.
_IGNORED_OFFICIAL_ARGS = frozenset(
    {
        "drop_rate",
        "attn_drop_rate",
        "drop_path_rate",
        "flash_if_available",
        "fused_if_available",
        "init_adaln",
        "init_adaln_gamma",
        "init_head",
        "init_std",
        "device",
        "test_mode",
        "dropout",
    }
)
_VAR_ONLY_ARGS = frozenset(
    {
        "num_classes",
        "depth",
        "embed_dim",
        "num_heads",
        "mlp_ratio",
        "norm_eps",
        "shared_aln",
        "cond_drop_rate",
        "attn_l2_norm",
    }
)
_VQVAE_ONLY_ARGS = frozenset(
    {
        "ch",
        "ch_mult",
        "beta",
        "using_znorm",
        "quant_conv_ks",
        "quant_resi",
        "share_quant_resi",
        "default_qresi_counts",
        "num_res_blocks",
        "using_sa",
        "using_mid_sa",
        "norm_groups",
    }
)
_SHARED_ARGS = frozenset({"vocab_size", "V", "z_channels", "Cvae", "patch_nums", "v_patch_nums"})


def _check_official_keys(args: Mapping[str, Any], owner: str) -> None:
    known = _IGNORED_OFFICIAL_ARGS | _VAR_ONLY_ARGS | _VQVAE_ONLY_ARGS | _SHARED_ARGS
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"{owner}.from_official_args: unknown official arguments {unknown}")


def _shared_official_args(args: Mapping[str, Any], *, code_dim_field: str) -> dict[str, Any]:
    """The arguments VAR(...) and VQVAE(...) share, under either official spelling."""
    kw: dict[str, Any] = {}
    aliases = (
        (("vocab_size", "V"), "vocab_size", int),
        (("z_channels", "Cvae"), code_dim_field, int),
        (("patch_nums", "v_patch_nums"), "patch_nums", _tuple_ints),
    )
    for names, field_name, convert in aliases:
        for name in names:
            if name in args:
                kw[field_name] = convert(args[name])
    return kw


def _tuple_ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class VQVAEConfig:
    """VAR's multi-scale VQVAE (``models/vqvae.py`` + ``models/quant.py`` + ``basic_vae.py``).

    ``ch_mult`` is configurable (the official class hard-codes ``(1, 1, 2, 2, 4)``) so tiny
    tokenizers can use fewer levels; ``norm_groups`` likewise (official: 32).
    """

    vocab_size: int = 4096
    z_channels: int = 32  # Cvae: codebook dimension
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    using_sa: bool = True  # attention blocks at the lowest resolution
    using_mid_sa: bool = True
    norm_groups: int = 32
    in_channels: int = 3
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  # phi(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4  # 0: one phi per scale, 1: one shared phi, k>1: k phis shared
    default_qresi_counts: int = 0  # non-shared phi count (0: one per scale)
    using_znorm: bool = False  # cosine instead of L2 nearest code (False in the release)
    beta: float = 0.25  # commitment weight of the training loss
    patch_nums: tuple[int, ...] = PATCH_NUMS_256

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", _tuple_ints(self.ch_mult))
        object.__setattr__(self, "patch_nums", _tuple_ints(self.patch_nums))
        if not self.patch_nums or list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(f"patch_nums must be strictly increasing, got {self.patch_nums}")
        if len(self.patch_nums) < 2:
            raise ValueError("VAR needs at least two scales")
        for c in {self.ch * m for m in self.ch_mult}:
            if c % self.norm_groups:
                raise ValueError(
                    f"channel count {c} is not divisible by norm_groups={self.norm_groups}"
                )
        if self.share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {self.share_quant_resi}")

    @property
    def Cvae(self) -> int:  # noqa: N802 - the official name
        return self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    @classmethod
    def preset(cls, name: str) -> VQVAEConfig:
        if name not in VQVAE_PRESETS:
            raise ValueError(f"unknown VQVAE preset {name!r}; known: {sorted(VQVAE_PRESETS)}")
        return VQVAE_PRESETS[name]

    @classmethod
    def from_official_args(cls, args: Mapping[str, Any]) -> VQVAEConfig:
        """From ``VQVAE(...)`` / ``build_vae_var(...)`` keyword arguments; VAR-only keys ignored."""
        _check_official_keys(args, cls.__name__)
        kw = _shared_official_args(args, code_dim_field="z_channels")
        own = {f.name for f in fields(cls)}
        kw.update({k: v for k, v in args.items() if k in _VQVAE_ONLY_ARGS and k in own})
        return cls(**kw)


@dataclass(frozen=True)
class VARConfig:
    """The VAR transformer (``models/var.py``, ``models/basic_var.py``).

    Release checkpoints: depth d, width 64 d, d heads, MLP 4x, ``attn_l2_norm=True``.
    ``cond_drop_rate`` is the training-time label drop (CFG). The model never draws it: a
    trainer replaces dropped labels by the null class before ``VAR.forward`` (no hidden RNG).
    """

    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    vocab_size: int = 4096
    cvae: int = 32  # width of the VQVAE codebook (word_embed input)
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_nums", _tuple_ints(self.patch_nums))
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}"
            )
        if len(self.patch_nums) < 2 or list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(
                f"patch_nums must be strictly increasing with >= 2 scales, got {self.patch_nums}"
            )

    # ---- derived values
    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def num_tokens(self) -> int:  # L
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def scale_ranges(self) -> tuple[tuple[int, int], ...]:
        """``[begin, end)`` token range of every scale (official ``begin_ends``)."""
        out, start = [], 0
        for p in self.patch_nums:
            out.append((start, start + p * p))
            start += p * p
        return tuple(out)

    @classmethod
    def preset(cls, name: str) -> VARConfig:
        if name not in VAR_PRESETS:
            raise ValueError(f"unknown VAR preset {name!r}; known: {sorted(VAR_PRESETS)}")
        return VAR_PRESETS[name]

    @classmethod
    def from_depth(cls, depth: int, **overrides: Any) -> VARConfig:
        """The release family: width 64 * depth, depth heads (``build_vae_var``)."""
        return cls(depth=depth, embed_dim=WIDTH_PER_DEPTH * depth, num_heads=depth, **overrides)

    @classmethod
    def from_official_args(cls, args: Mapping[str, Any]) -> VARConfig:
        """From ``VAR(...)`` / ``build_vae_var(...)`` keyword arguments (+ the VQVAE's V, Cvae).

        ``build_vae_var`` gives only ``depth``: width and heads then follow the release rule.
        Official defaults apply to what is absent, except ``attn_l2_norm`` whose default here
        is the release value ``True`` (``VAR(...)``'s own default is ``False``).
        """
        _check_official_keys(args, cls.__name__)
        kw = _shared_official_args(args, code_dim_field="cvae")
        kw.update({k: v for k, v in args.items() if k in _VAR_ONLY_ARGS})
        depth = int(kw.get("depth", cls.depth))
        kw.setdefault("embed_dim", WIDTH_PER_DEPTH * depth)
        kw.setdefault("num_heads", depth)
        return cls(**kw)


VAR_PRESETS: dict[str, VARConfig] = {
    **{f"d{d}": VARConfig.from_depth(d) for d in (16, 20, 24, 30)},
    # Laptop-sized (the shape of the first official-parity fixture set).
    "debug": VARConfig(
        depth=2,
        embed_dim=128,
        num_heads=2,
        num_classes=10,
        vocab_size=256,
        cvae=8,
        patch_nums=(1, 2, 3, 4),
    ),
}

VQVAE_PRESETS: dict[str, VQVAEConfig] = {
    "vae_ch160v4096z32": VQVAEConfig(),
    # Laptop-sized, the official trunk (ch_mult 1,1,2,2,4) at ch 32: 64 px images.
    "debug": VQVAEConfig(vocab_size=256, z_channels=8, ch=32, patch_nums=(1, 2, 3, 4)),
}
