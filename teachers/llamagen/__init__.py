"""LlamaGen (FoundationVision/LlamaGen) c2i teacher: an independent implementation that loads
the official checkpoints unchanged. See docs/teachers.md for the files and presets.

- ``GPTConfig`` / ``VQConfig``: typed configs with the official presets;
- ``GPT`` / ``VQModel``: the modules, parameter names mirroring the official state dicts;
- ``load_gpt`` / ``load_vq`` / ``load_llamagen_teacher``: strict loading of official files;
- ``LlamaGenTeacher``: the ``teachers.protocol.Teacher`` of this family;
- ``generate``: the official sampler semantics over the incremental session.
"""

from teachers.llamagen.config import (
    GPT_SIZES,
    OFFICIAL_GPT_CHECKPOINTS,
    OFFICIAL_VQ_CHECKPOINTS,
    GPTConfig,
    VQConfig,
)
from teachers.llamagen.gpt import GPT, KVCache
from teachers.llamagen.loading import load_gpt, load_llamagen_teacher, load_vq
from teachers.llamagen.sampling import DD_SAMPLING, OFFICIAL_FID_CFG, generate
from teachers.llamagen.session import LlamaGenSession
from teachers.llamagen.teacher import LlamaGenTeacher
from teachers.llamagen.vq import VQModel

__all__ = [
    "DD_SAMPLING",
    "GPT",
    "GPT_SIZES",
    "GPTConfig",
    "KVCache",
    "LlamaGenSession",
    "LlamaGenTeacher",
    "OFFICIAL_FID_CFG",
    "OFFICIAL_GPT_CHECKPOINTS",
    "OFFICIAL_VQ_CHECKPOINTS",
    "VQConfig",
    "VQModel",
    "generate",
    "load_gpt",
    "load_llamagen_teacher",
    "load_vq",
]
