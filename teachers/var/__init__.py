"""VAR (FoundationVision/VAR) c2i teacher: next-scale prediction, an independent implementation
that loads the official ``var_d{16,20,24,30}.pth`` and ``vae_ch160v4096z32.pth`` unchanged and
reproduces the official numbers (``tests/test_var_parity.py``). See docs/teachers.md.

- ``VARConfig`` / ``VQVAEConfig``: typed configs, presets in ``VAR_PRESETS`` / ``VQVAE_PRESETS``;
- ``VAR`` / ``VQVAE``: the modules, parameter names mirroring the official state dicts;
- ``load_var`` / ``load_vqvae`` / ``load_var_teacher``: strict loading of official files;
- ``VARTeacher`` / ``VARSession``: the ``teachers.protocol.Teacher`` of this family;
- ``DD_PAPER_SAMPLING`` and the other ``SAMPLING_PRESETS``. Plain sampling is
  ``teachers.sampling.sample_tokens``, images ``teacher.decode_tokens``.
"""

from teachers.var.config import VAR_PRESETS, VQVAE_PRESETS, VARConfig, VQVAEConfig
from teachers.var.loading import load_var, load_var_teacher, load_vqvae
from teachers.var.model import VAR, KVCache, block_causal_bias
from teachers.var.quant import VectorQuantizer
from teachers.var.sampling import DD_PAPER_SAMPLING, README_FID_SAMPLING, SAMPLING_PRESETS
from teachers.var.session import VARSession
from teachers.var.teacher import VARTeacher
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
]
