"""Typed configs of LlamaGen's c2i GPT and VQ tokenizer, with the official presets.

Fields are the official constructor arguments that shape the weights or the maths; derived
values (head dim, FFN width, grid size, table sizes) are properties, never stored.
Training-only official arguments (dropout rates, init range, cache sizes) are accepted by
``from_official_args`` and ignored; unknown arguments are rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Official c2i checkpoint file -> (size preset, image tokens per side). 384 px / 16 = 24.
OFFICIAL_GPT_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "c2i_B_256.pt": ("B", 16),
    "c2i_B_384.pt": ("B", 24),
    "c2i_L_256.pt": ("L", 16),
    "c2i_L_384.pt": ("L", 24),
    "c2i_XL_384.pt": ("XL", 24),
    "c2i_XXL_384.pt": ("XXL", 24),
    "c2i_3B_384.pt": ("3B", 24),
}
OFFICIAL_VQ_CHECKPOINTS: dict[str, str] = {"vq_ds16_c2i.pt": "VQ-16", "vq_ds8_c2i.pt": "VQ-8"}

IMAGENET_NUM_CLASSES = 1000
LLAMAGEN_VOCAB_SIZE = 16384
FFN_EXPANSION = 4  # SwiGLU hidden = round_up(int(2 * 4 * dim / 3), multiple_of)

# Official GPT ModelArgs that only matter for training or for the official cache bookkeeping.
_GPT_TRAINING_ONLY_ARGS = frozenset(
    {
        "initializer_range",
        "token_dropout_p",
        "attn_dropout_p",
        "resid_dropout_p",
        "ffn_dropout_p",
        "drop_path_rate",
        "max_batch_size",
        "max_seq_len",
        "caption_dim",
    }
)
_VQ_TRAINING_ONLY_ARGS = frozenset({"commit_loss_beta", "entropy_loss_ratio", "dropout_p"})


def _round_up(value: int, multiple: int) -> int:
    return value if value % multiple == 0 else value + multiple - value % multiple


@dataclass(frozen=True)
class GPTConfig:
    """LlamaGen c2i GPT. ``block_size`` = image tokens (16x16 = 256 at 256 px, 24x24 at 384 px)."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    vocab_size: int = LLAMAGEN_VOCAB_SIZE
    num_classes: int = IMAGENET_NUM_CLASSES
    # > 0 gives the class table its extra null row (index num_classes), used by CFG.
    class_dropout_prob: float = 0.1
    block_size: int = 256
    cls_token_num: int = 1

    def __post_init__(self) -> None:
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.kv_heads}")
        if self.grid_size**2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square grid of tokens")
        if self.cls_token_num != 1:
            raise ValueError(
                f"c2i models use one class token, got cls_token_num={self.cls_token_num}"
            )
        if self.num_classes <= 0 or self.vocab_size <= 0:
            raise ValueError("num_classes and vocab_size must be positive")

    # Derived values.
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_hidden_dim(self) -> int:
        hidden = int(2 * FFN_EXPANSION * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return _round_up(hidden, self.multiple_of)

    @property
    def grid_size(self) -> int:
        return round(self.block_size**0.5)

    @property
    def seq_len(self) -> int:
        """Class token plus image tokens: the length of the RoPE table and of the KV cache."""
        return self.cls_token_num + self.block_size

    @property
    def has_null_class(self) -> bool:
        return self.class_dropout_prob > 0

    @property
    def num_class_embeddings(self) -> int:
        """Rows of ``cls_embedding.embedding_table``: the classes plus the null class if any."""
        return self.num_classes + int(self.has_null_class)

    # Constructors.
    @classmethod
    def preset(cls, name: str, image_tokens_per_side: int = 16, **overrides: object) -> GPTConfig:
        """A ``GPT_PRESETS`` entry (``"GPT-B"`` also accepted) at ``image_tokens_per_side``."""
        key = name.removeprefix("GPT-")
        if key not in GPT_PRESETS:
            raise ValueError(f"unknown LlamaGen GPT preset {name!r}; known: {sorted(GPT_PRESETS)}")
        return dataclasses.replace(
            GPT_PRESETS[key], block_size=image_tokens_per_side**2, **overrides
        )

    @classmethod
    def for_checkpoint(cls, path: str | Path) -> GPTConfig:
        """The preset of an official file name, e.g. ``c2i_L_384.pt`` -> L with 24x24 tokens."""
        name = Path(path).name
        if name not in OFFICIAL_GPT_CHECKPOINTS:
            raise ValueError(
                f"{name!r} is not an official c2i file name {sorted(OFFICIAL_GPT_CHECKPOINTS)}"
            )
        size, side = OFFICIAL_GPT_CHECKPOINTS[name]
        return cls.preset(size, side)

    @classmethod
    def from_official_args(cls, args: Mapping[str, object], cls_token_num: int = 1) -> GPTConfig:
        """From the official ``ModelArgs`` keyword arguments (``GPT_models[...](**args)``)."""
        args = dict(args)
        model_type = args.pop("model_type", "c2i")
        if model_type != "c2i":
            raise ValueError(
                f"only class-conditional (c2i) LlamaGen models are supported, got {model_type!r}"
            )
        for key in _GPT_TRAINING_ONLY_ARGS & set(args):
            args.pop(key)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(args) - fields
        if unknown:
            raise ValueError(f"unknown LlamaGen GPT arguments: {sorted(unknown)}")
        args.setdefault("cls_token_num", cls_token_num)
        return cls(**args)


@dataclass(frozen=True)
class VQConfig:
    """LlamaGen's VQ tokenizer: conv encoder and decoder around a ``V x C`` codebook."""

    codebook_size: int = LLAMAGEN_VOCAB_SIZE
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    # The official quantiser keeps a ``codebook_used`` buffer (usage statistics) when True.
    codebook_show_usage: bool = True
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    in_channels: int = 3
    norm_groups: int = 32
    # The decoder's own base width and res blocks per level; None: the encoder's, as in every
    # official checkpoint. The tiny teacher decodes with a lighter decoder refitted on its
    # frozen codebook (``teachers.tiny.train_llamagen.refit_decoder``).
    decoder_ch: int | None = None
    decoder_num_res_blocks: int | None = None
    # The decoder's attention blocks (the mid block's and the lowest level's), as in every
    # official checkpoint; False: none (the mid block is then res-res), as the tiny teacher
    # decodes (docs/embedded_default.md, "The refitted decoder").
    decoder_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not self.ch_mult:
            raise ValueError("ch_mult needs at least one level")
        for ch in {self.ch, self.dec_ch}:
            widths = [ch] + [ch * m for m in self.ch_mult]
            if any(w % self.norm_groups for w in widths):
                raise ValueError(
                    f"every width {widths} must be divisible by norm_groups={self.norm_groups}"
                )
        if self.dec_num_res_blocks < 0:
            raise ValueError(f"decoder_num_res_blocks must be >= 0, got {self.dec_num_res_blocks}")

    @property
    def dec_ch(self) -> int:
        """The decoder's base width (``decoder_ch``, else the encoder's ``ch``)."""
        return self.ch if self.decoder_ch is None else self.decoder_ch

    @property
    def dec_num_res_blocks(self) -> int:
        """The decoder's res blocks per level, minus one as in the official code."""
        if self.decoder_num_res_blocks is None:
            return self.num_res_blocks
        return self.decoder_num_res_blocks

    @property
    def has_own_decoder(self) -> bool:
        """True when the decoder's shape differs from the encoder's (a refitted decoder)."""
        encoder_shaped = (self.ch, self.num_res_blocks, True)
        return (self.dec_ch, self.dec_num_res_blocks, self.decoder_attention) != encoder_shaped

    def with_encoder_shaped_decoder(self) -> VQConfig:
        """This config with the decoder shaped like the encoder (the official layout)."""
        return dataclasses.replace(
            self, decoder_ch=None, decoder_num_res_blocks=None, decoder_attention=True
        )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def preset(cls, name: str, **overrides: object) -> VQConfig:
        """A ``VQ_PRESETS`` entry: ``"VQ-16"`` (ch_mult 1,1,2,2,4) or ``"VQ-8"`` (1,2,2,4)."""
        if name not in VQ_PRESETS:
            raise ValueError(f"unknown LlamaGen VQ preset {name!r}; known: {sorted(VQ_PRESETS)}")
        return dataclasses.replace(VQ_PRESETS[name], **overrides)

    @classmethod
    def from_official_args(cls, args: Mapping[str, object]) -> VQConfig:
        """From the official VQ ``ModelArgs`` (``encoder_ch_mult``, ``decoder_ch_mult``, ...)."""
        args = dict(args)
        for key in _VQ_TRAINING_ONLY_ARGS & set(args):
            args.pop(key)
        encoder_mult, decoder_mult = (
            args.pop("encoder_ch_mult", None),
            args.pop("decoder_ch_mult", None),
        )
        if encoder_mult is not None or decoder_mult is not None:
            if (
                encoder_mult is None
                or decoder_mult is None
                or list(encoder_mult) != list(decoder_mult)
            ):
                raise ValueError(
                    "encoder_ch_mult and decoder_ch_mult must be given together and be equal"
                )
            args.setdefault("ch_mult", encoder_mult)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(args) - fields
        if unknown:
            raise ValueError(f"unknown LlamaGen VQ arguments: {sorted(unknown)}")
        if "ch_mult" in args:
            args["ch_mult"] = tuple(args["ch_mult"])
        return cls(**args)


# Official ``GPT_models`` sizes at 256 px (LlamaGen autoregressive/models/gpt.py);
# ``GPTConfig.preset`` sets the token grid. ``debug``: the shapes of the parity fixture (dim 64,
# 2 layers, 4 heads).
GPT_PRESETS: dict[str, GPTConfig] = {
    "B": GPTConfig(n_layer=12, n_head=12, dim=768),
    "L": GPTConfig(n_layer=24, n_head=16, dim=1024),
    "XL": GPTConfig(n_layer=36, n_head=20, dim=1280),
    "XXL": GPTConfig(n_layer=48, n_head=24, dim=1536),
    "3B": GPTConfig(n_layer=24, n_head=32, dim=3200),
    "debug": GPTConfig(n_layer=2, n_head=4, dim=64, vocab_size=256, num_classes=10),
}
# Official ``VQ_models``: VQ-16 (16x downsampling) and VQ-8.
VQ_PRESETS: dict[str, VQConfig] = {
    "VQ-16": VQConfig(ch_mult=(1, 1, 2, 2, 4)),
    "VQ-8": VQConfig(ch_mult=(1, 2, 2, 4)),
}
