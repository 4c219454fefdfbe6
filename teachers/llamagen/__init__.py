"""LlamaGen (FoundationVision/LlamaGen) c2i teacher: an independent implementation that loads
the official checkpoints unchanged. See docs/teachers.md for the files and presets.

- ``GPTConfig`` / ``VQConfig``: typed configs, presets in ``GPT_PRESETS`` / ``VQ_PRESETS``;
- ``GPT`` / ``VQModel``: the modules, parameter names mirroring the official state dicts;
- ``load_gpt`` / ``load_vq`` / ``load_llamagen_teacher``: strict loading of official files;
- ``LlamaGenTeacher`` / ``LlamaGenSession``: the ``teachers.protocol.Teacher`` of this family;
- ``DD_PAPER_SAMPLING`` and the other ``SAMPLING_PRESETS``. Plain sampling is
  ``teachers.sampling.sample_tokens``, images ``teacher.decode_tokens``.
"""

from teachers.llamagen.config import (
    GPT_PRESETS,
    OFFICIAL_GPT_CHECKPOINTS,
    OFFICIAL_VQ_CHECKPOINTS,
    VQ_PRESETS,
    GPTConfig,
    VQConfig,
)
from teachers.llamagen.gpt import GPT, KVCache
from teachers.llamagen.loading import load_gpt, load_llamagen_teacher, load_vq
from teachers.llamagen.sampling import DD_PAPER_SAMPLING, OFFICIAL_FID_CFG, SAMPLING_PRESETS
from teachers.llamagen.session import LlamaGenSession
from teachers.llamagen.teacher import LlamaGenTeacher
from teachers.llamagen.vq import VQModel

__all__ = [
    "DD_PAPER_SAMPLING",
    "GPT",
    "GPT_PRESETS",
    "GPTConfig",
    "KVCache",
    "LlamaGenSession",
    "LlamaGenTeacher",
    "OFFICIAL_FID_CFG",
    "OFFICIAL_GPT_CHECKPOINTS",
    "OFFICIAL_VQ_CHECKPOINTS",
    "SAMPLING_PRESETS",
    "VQ_PRESETS",
    "VQConfig",
    "VQModel",
    "load_gpt",
    "load_llamagen_teacher",
    "load_vq",
]
