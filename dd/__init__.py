"""Distilled Decoding: the method (flow matching, student, losses, sampling, CLI).

The public entry points (``dd.load_student``, ``dd.sample``, ``dd.DDStudent``) are imported
on first use, so that ``import dd.flow`` (used by ``data_gen``) stays light and acyclic.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"sample": "dd.sampling", "DDStudent": "dd.student", "load_student": "dd.checkpoint"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dd' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
