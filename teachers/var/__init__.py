"""VAR (FoundationVision/VAR): next-scale prediction, an independent implementation.

Loads the official ``var_d{16,20,24,30}.pth`` and ``vae_ch160v4096z32.pth`` unchanged and
reproduces the official numbers (see ``tests/test_var_parity.py``).
"""

from teachers.var.config import VAR_PRESETS, VQVAE_PRESETS, VARConfig, VQVAEConfig
from teachers.var.load import load_var, load_var_teacher, load_vqvae
from teachers.var.model import VAR, KVCache, block_causal_bias
from teachers.var.quant import VectorQuantizer
from teachers.var.sample import sample_images
from teachers.var.teacher import (
    DD_PAPER_SAMPLING,
    README_FID_SAMPLING,
    SAMPLING_PRESETS,
    VARSession,
    VARTeacher,
)
from teachers.var.vqvae import VQVAE

__all__ = [
    "DD_PAPER_SAMPLING",
    "README_FID_SAMPLING",
    "SAMPLING_PRESETS",
    "VAR",
    "VAR_PRESETS",
    "VARConfig",
    "VARSession",
    "VARTeacher",
    "VQVAE",
    "VQVAE_PRESETS",
    "VQVAEConfig",
    "KVCache",
    "VectorQuantizer",
    "block_causal_bias",
    "load_var",
    "load_var_teacher",
    "load_vqvae",
    "sample_images",
]
