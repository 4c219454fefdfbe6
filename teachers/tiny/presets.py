"""Tiny presets of both families for the digits data (16x16 images, 10 classes).

The models are the families' own classes (``teachers.llamagen``, ``teachers.var``) with small
sizes; only the numbers live here. Token counts are large enough that the AR order matters:
LlamaGen 8x8 = 64 raster tokens, VAR 1+4+9+16+36+64 = 130 tokens in 6 scales.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from teachers.data import DIGITS_NUM_CLASSES
from teachers.far.config import AutoencoderConfig, FARConfig, autoencoder_preset, far_preset
from teachers.llamagen.config import GPTConfig, VQConfig
from teachers.var.config import VARConfig, VQVAEConfig

TINY_VOCAB_SIZE = 64
TINY_CODE_DIM = 8
TINY_GRID = 8  # tokens per side of the last grid; 16 px images / 2x down-sampling
TINY_PATCH_NUMS = (1, 2, 3, 4, 6, 8)
CLASS_DROPOUT = 0.1  # label -> null class during training, so CFG has an unconditional model


def llamagen_tiny_configs(num_classes: int = DIGITS_NUM_CLASSES) -> tuple[GPTConfig, VQConfig]:
    gpt = GPTConfig(
        dim=96,
        n_layer=4,
        n_head=4,
        multiple_of=32,
        vocab_size=TINY_VOCAB_SIZE,
        num_classes=num_classes,
        class_dropout_prob=CLASS_DROPOUT,
        block_size=TINY_GRID * TINY_GRID,
    )
    vq = VQConfig(
        codebook_size=TINY_VOCAB_SIZE,
        codebook_embed_dim=TINY_CODE_DIM,
        codebook_l2_norm=True,
        codebook_show_usage=False,  # the official 65536-entry usage buffer is training-only
        ch=16,
        ch_mult=(1, 2),
        z_channels=32,
        num_res_blocks=1,
        norm_groups=8,
        # The shipped decoder is refitted lighter on the frozen codebook (train_llamagen.py):
        # benchmarks/bench_student.py at batch 64 timed the encoder-shaped one at 0.36x of a GPT
        # forward, ch 8 with one res block a level at 0.13x, and the same without attention at
        # about 0.09x-0.10x (0.07x-0.08x fed contiguous code maps), the reconstruction FID not worse
        # (docs/embedded_default.md, "The refitted decoder").
        decoder_ch=8,
        decoder_num_res_blocks=0,
        decoder_attention=False,
    )
    return gpt, vq


def var_tiny_configs(num_classes: int = DIGITS_NUM_CLASSES) -> tuple[VARConfig, VQVAEConfig]:
    var = VARConfig(
        depth=4,
        embed_dim=96,
        num_heads=4,
        num_classes=num_classes,
        vocab_size=TINY_VOCAB_SIZE,
        cvae=TINY_CODE_DIM,
        patch_nums=TINY_PATCH_NUMS,
        cond_drop_rate=CLASS_DROPOUT,
    )
    vae = VQVAEConfig(
        vocab_size=TINY_VOCAB_SIZE,
        z_channels=TINY_CODE_DIM,
        ch=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        norm_groups=8,
        patch_nums=TINY_PATCH_NUMS,
    )
    return var, vae


@dataclass(frozen=True)
class TrainSettings:
    """Steps and optimiser settings of one tiny-teacher run (tokenizer, then AR model)."""

    seed: int = 0
    tokenizer_steps: int = 600
    tokenizer_batch_size: int = 64
    tokenizer_lr: float = 2e-3
    commitment_beta: float = 0.25
    dead_code_every: int = 50  # steps between restarts of codes unused in that window
    ar_steps: int = 1500
    ar_batch_size: int = 64
    ar_lr: float = 1e-3
    ar_weight_decay: float = 0.05
    warmup_steps: int = 100
    max_shift: int = 1  # augmentation: random translation by up to this many pixels
    token_copies: int = 8  # augmented copies of every training image tokenised for the AR model
    # LlamaGen: steps of the decoder refit on the frozen codebook, when the VQ config's decoder
    # is shaped unlike its encoder (batch and learning rate: the tokenizer's).
    decoder_steps: int = 1500

    def to_dict(self) -> dict:
        return asdict(self)

    def record(self, family: str) -> dict:
        """The settings a ``family`` run uses, as its ``tiny.json`` entry records them: without
        those of other families (``FAMILY_ONLY_SETTINGS``), which it ignores."""
        return {
            key: value
            for key, value in self.to_dict().items()
            if family in FAMILY_ONLY_SETTINGS.get(key, (family,))
        }


# Settings only some families use (the others' entries leave them out): LlamaGen's decoder
# refit; the VQ codebook's commitment and dead-code restarts (FAR's tokenizer is continuous).
FAMILY_ONLY_SETTINGS: dict[str, tuple[str, ...]] = {
    "decoder_steps": ("llamagen",),
    "commitment_beta": ("llamagen", "var"),
    "dead_code_every": ("llamagen", "var"),
}


def far_tiny_configs(
    num_classes: int = DIGITS_NUM_CLASSES, *, head_kind: str = "shortcut"
) -> tuple[FARConfig, AutoencoderConfig]:
    """FAR-Causal over a 4x4 grid of 8-dim continuous tokens (``teachers.far`` presets "tiny")."""
    return far_preset("tiny", num_classes=num_classes, head_kind=head_kind), autoencoder_preset(
        "tiny"
    )
