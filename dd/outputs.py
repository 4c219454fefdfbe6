"""Checks of a command's ``--output`` before any model loads (``dd eval``, ``dd sample``).

A bad output path used to fail only when the results were written, after the whole run
(minutes on the CPU, hours for a GPU evaluation): a folder given for the JSON report, a path
through a file, a place that cannot be written. Nothing is created here: the folders are made
when the results are written, so a run refused later (a missing checkpoint) leaves no empty
folder behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output(path: Path, *, folder: bool, purpose: str, flag: str = "--output") -> None:
    """Refuse (``ValueError``, one line) an output that cannot be written: a folder where a
    file is wanted (``folder=False``) or the reverse, a path through a file, or a place where
    no file can be made (a probe file is made and removed in the nearest existing folder).
    ``purpose``: what the output is for, as the refusal says it ("a file for the JSON
    report")."""
    if path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{flag} {path} is a file: give {purpose}")
        if not folder and path.is_dir():
            raise ValueError(f"{flag} {path} is a folder: give {purpose}")
    existing = nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder: give {purpose}")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".dd-output-check-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise ValueError(
            f"{flag} {path}: cannot write in {existing} ({error.strerror or error})"
        ) from error
