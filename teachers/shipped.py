"""The folder of shipped weights (``teachers/weights``) and its metadata file ``tiny.json``.

One entry per shipped model (a tiny teacher or the digits classifier): its family, files,
configs, the command and seed that reproduce it, and its training record. Readers of an entry
(``teachers.tiny.registry``, ``dd.metrics.digits``) and its writer (``dd train-teacher``) share
these two functions, so neither has to import the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
METADATA_FILE = "tiny.json"
LOCK_FILE = ".tiny.json.lock"  # held while an entry is written (write_metadata_entry)
SHIPPED_FILE_MODE = 0o644  # mkstemp creates 0600; the file is shipped package data


def read_metadata(weights_dir: str | Path | None = None) -> dict:
    """The entries of ``<weights_dir>/tiny.json`` (default: the shipped folder); ``{}`` if none.
    A ``tiny.json`` that is not a file, not JSON, or not an object of entry objects is a
    ``ValueError`` naming it (a folder of that name was read as no entries, and a run trained
    for minutes before failing to write it; ``[]`` ended in an ``AttributeError``)."""
    path = Path(weights_dir or WEIGHTS_DIR) / METADATA_FILE
    if not path.exists():
        return {}
    if not path.is_file():
        raise ValueError(f"{path} is not a file: move it away (it holds the teachers' entries)")
    try:
        metadata = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{path} holds a JSON {type(metadata).__name__}, not an object of entries by name"
        )
    for name, entry in metadata.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {name!r} is not a JSON object")
    return metadata


def write_metadata_entry(name: str, entry: dict | None, weights_dir: str | Path) -> Path:
    """Set ``name``'s entry of ``<weights_dir>/tiny.json`` (``None``: remove it; atomic
    replace, other entries kept). Two runs writing into one folder at once (e.g. both FAR
    heads on two cores) take turns: the read-modify-replace holds an exclusive lock, else the
    later replace dropped the other's entry."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / METADATA_FILE
    with _exclusive(weights_dir / LOCK_FILE):
        metadata = read_metadata(weights_dir)
        if entry is None:
            if name not in metadata:
                return path
            del metadata[name]
        else:
            metadata[name] = entry
        fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=".tiny.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(dict(sorted(metadata.items())), handle, indent=2)
                handle.write("\n")
            os.chmod(tmp, SHIPPED_FILE_MODE)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def check_entry_files(name: str, entry: dict, weights_dir: str | Path) -> None:
    """Refuse weight files that are not those ``name``'s entry records (its ``sha256``, one per
    file key: entries ``dd train-teacher`` writes record them; the shipped entries, written
    before, have none and are not checked), e.g. files a re-train interrupted or running beside
    left under the entry. A one-line ``ValueError`` naming the file and the command that
    makes it."""
    for key, recorded in entry.get("sha256", {}).items():
        path = Path(weights_dir) / entry["files"][key]
        if not path.is_file():
            found = "is missing"
        elif file_sha256(path) != recorded:
            found = "is not the file it records (sha256 differs)"
        else:
            continue
        raise ValueError(
            f"{path} {found}: {Path(weights_dir) / METADATA_FILE} entry {name!r} records "
            f"another; re-run its command: {entry.get('command', 'dd train-teacher')}"
        )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` for the block (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
