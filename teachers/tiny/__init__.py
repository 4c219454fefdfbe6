"""Tiny teachers on bundled data: the embedded default every later stage runs on.

``load_tiny_teacher("llamagen-digits")`` / ``load_tiny_teacher("var-digits")`` return teachers
satisfying ``teachers.protocol.Teacher``, built by the families' own loaders from the shipped
``teachers/weights/*.safetensors``; ``dd train-teacher`` reproduces them (docs/embedded_default.md).
"""

from teachers.shipped import read_metadata
from teachers.tiny.presets import TrainSettings, llamagen_tiny_configs, var_tiny_configs
from teachers.tiny.registry import (
    TINY_SAMPLING,
    TINY_TEACHERS,
    load_tiny_teacher,
    tiny_sampling,
)

__all__ = [
    "TINY_SAMPLING",
    "TINY_TEACHERS",
    "TrainSettings",
    "llamagen_tiny_configs",
    "load_tiny_teacher",
    "read_metadata",
    "tiny_sampling",
    "var_tiny_configs",
]
