"""A copy of a pair folder in files, memory-mapped read-only: one copy for every process of a
node (``pairs.memory_map`` of a distill recipe; ``dd.data.load_pairs(memory_map=...)``).

Layout of the ``memory_map`` folder (any folder whose parent exists; the pair folder itself is
never written)::

    <key>/labels.bin, noise.bin, tokens.bin    raw tensors, row i = global index i
    <key>/layout.json                          identity, shapes, dtypes: written last
    .<key>.<uuid>.partial/                     a copy being made
    .<key>.lock                                held by the process making it

``key`` is a hash of the pairs' identity (``dd.data.pair_identity``: teacher fingerprint,
settings, count and every shard's sha256), so pairs regenerated into the same folder get a copy
of their own, never a stale one. The first load reads the shards once, with every check of an
in-memory load (``dd.data.fill_pairs``), writes the files, flushes them to disk and renames the
folder into place: processes that find ``<key>/layout.json`` map it without reading a shard.
Under DDP, ``dd train``'s first process loads before Lightning starts the others; processes
started together (torchrun, SLURM) take a lock (``flock``) in turn, so one makes the copy and
the others wait for it. Where the lock does not hold (some network file systems), each writes
its own ``.partial`` folder; the first rename wins and the others map it.

Mapped read-only and shared (``numpy.memmap``, mode ``r``): the pages are the kernel's page
cache, shared by every process that maps the file, and read from disk when they do not fit in
memory (training gathers rows at random: keep the folder on a local SSD). A writable private
mapping (``torch.from_file(shared=False)``) would be charged in full to every process' commit
budget, so a copy larger than memory could not be mapped at all. Writing to the tensors is an
error of the caller (a segmentation fault): training only gathers rows, as copies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from data_gen.shards import PARTIAL_SUFFIX, write_json_atomic
from dd.data import PairSet, fill_pairs, finished_manifest, manifest_identity

log = logging.getLogger(__name__)

LAYOUT_NAME = "layout.json"
FIELDS = ("labels", "noise", "tokens")
KEY_CHARS = 16
# What a copy holds (dd.data: labels and codebook tokens int64, noise float16 / float32,
# continuous tokens float32), and numpy's name for it (numpy.memmap maps the files).
NUMPY_DTYPES = {torch.long: np.int64, torch.float16: np.float16, torch.float32: np.float32}
DTYPES = {str(d): d for d in NUMPY_DTYPES}
# Part of every copy's key: a change of how a copy is laid out, or of what its making checks,
# gives new copies, never a stale one read in the new layout. 2: copies made since the reader
# checks every shard's size and sha256 (2026-12-07); format-1 copies were made without it.
COPY_FORMAT = 2


def identity_key(identity: dict) -> str:
    """The folder name of a copy: a hash of the pairs' identity."""
    text = json.dumps({"copy_format": COPY_FORMAT, **identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def mapped_pairs(
    folder: str | Path, memory_map: str | Path, *, teacher_fingerprint: str
) -> PairSet:
    """The pairs of the finished ``folder``, mapped from their copy in ``memory_map`` (made
    first if missing)."""
    # checked before any file is written
    root = Path(memory_map)
    check_parent_exists(root)
    manifest = finished_manifest(folder, teacher_fingerprint=teacher_fingerprint)
    identity = manifest_identity(manifest)
    copy = root / identity_key(identity)
    if not (copy / LAYOUT_NAME).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with copy_lock(root / f".{copy.name}.lock"):
            if not (copy / LAYOUT_NAME).is_file():  # made while this process waited
                make_copy(folder, root, copy, identity, teacher_fingerprint)
    return open_copy(copy, identity)


def check_parent_exists(root: Path) -> None:
    """Refuse a copies' folder whose parent does not exist: the paper recipes' placeholder
    (``/local_ssd/...``) left as is was created on the root file system and filled with a copy
    of up to 109 GB. Only the last level is created, on a disk someone chose."""
    parent = root.absolute().parent
    if not parent.is_dir():
        raise ValueError(
            f"pairs.memory_map {root}: its parent {parent} does not exist; create it, or give "
            "a folder on a node-local disk with room for the pairs (or null to load them in memory)"
        )


@contextlib.contextmanager
def copy_lock(path: Path) -> Iterator[None]:
    """One maker of a copy at a time: processes started together (torchrun, SLURM's 8 tasks of
    a node) wait for the first one's copy instead of each writing their own. The file stays:
    removing it would let a process that opens the path later lock another file."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish the copy in %s", path.parent)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_copy(
    folder: str | Path, root: Path, copy: Path, identity: dict, teacher_fingerprint: str
) -> None:
    """Write the copy of ``folder``'s pairs into a ``.partial`` folder of ``root``, then rename
    it to ``copy``; if another process' rename came first, keep theirs and remove ours."""
    stale = sorted(root.glob(f".*{PARTIAL_SUFFIX}"))
    if stale:  # another process' copy in the making, or a crashed one's: not ours to delete
        log.warning(
            "%s holds unfinished copies (delete them if no run is making one): %s",
            root,
            ", ".join(p.name for p in stale),
        )
    partial = root / f".{copy.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    partial.mkdir()
    log.info("making a memory-mapped copy of %s in %s", folder, copy)
    try:
        layout = {"identity": identity, "fields": {}}

        def allocate(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            layout["fields"][name] = {"shape": list(shape), "dtype": str(dtype)}
            numel = int(torch.Size(shape).numel())
            path = partial / f"{name}.bin"
            # Allocated in full first: a disk that fills up is an OSError (ENOSPC) here, not a
            # SIGBUS while writing through the mapping of a sparse file.
            with open(path, "wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, numel * dtype.itemsize)
            # r+: a shared writable mapping, so the writes go to the file
            return torch.from_numpy(np.memmap(path, NUMPY_DTYPES[dtype], mode="r+", shape=shape))

        pairs = fill_pairs(folder, teacher_fingerprint=teacher_fingerprint, allocate=allocate)
        del pairs  # unmapped: every write is in the page cache
        for name in FIELDS:  # on disk before the layout says the copy is complete
            with open(partial / f"{name}.bin", "rb+") as handle:
                os.fsync(handle.fileno())
        write_json_atomic(partial / LAYOUT_NAME, layout)
        try:
            os.rename(partial, copy)
        except OSError:
            if not (copy / LAYOUT_NAME).is_file():
                raise
            log.info("another process made %s first; using it", copy)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(partial)


def open_copy(copy: Path, identity: dict) -> PairSet:
    """Map a finished copy read-only, after checking it is of ``identity`` and its files are
    whole."""
    layout = json.loads((copy / LAYOUT_NAME).read_text())
    if layout["identity"] != identity:
        raise ValueError(
            f"{copy} is a copy of other pairs ({layout['identity']}), not of {identity}: delete it"
        )
    tensors = {}
    for name in FIELDS:
        field = layout["fields"][name]
        shape, dtype = tuple(field["shape"]), DTYPES[field["dtype"]]
        numel = int(torch.Size(shape).numel())
        path = copy / f"{name}.bin"
        expected = numel * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            size = path.stat().st_size if path.is_file() else "no"
            raise ValueError(
                f"{path}: {size} bytes, the copy's layout needs {expected}: delete {copy} "
                "and load again to remake it"
            )
        mapped = np.memmap(path, dtype=NUMPY_DTYPES[dtype], mode="r", shape=shape)
        with warnings.catch_warnings():  # read-only on purpose (module docstring)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors[name] = torch.from_numpy(mapped)
    count = tensors["labels"].shape[0]
    return PairSet(index=torch.arange(count), **tensors)
