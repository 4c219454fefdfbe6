"""Pair shards on disk: record encoding, atomic shard files, receipts, the manifest, resume.

Layout of an output folder (docs/pairs.md)::

    manifest.json            settings, teacher fingerprint, counts, per-shard sha256
    shard-000000.tar         webdataset shard: global indices [0, S)
    shard-000000.json        its receipt: range, record count, sha256, settings key
    ...

A shard is written as ``.shard-K.tar.partial``, its receipt is written (atomically), then the
shard is renamed to ``shard-K.tar``: a ``shard-K.tar`` therefore always has a receipt, and a
crash leaves at most a ``.partial`` file, which the next run deletes and regenerates.
Tar members carry fixed metadata (mtime 0), so a shard's bytes depend only on its records:
an interrupted-and-resumed run produces byte-identical shards to an uninterrupted one (for a
continuous-token teacher, only at the same batch size: its float tokens move by round-off
with the batch, docs/pairs.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import socket
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from tqdm.auto import tqdm

from teachers.shipped import file_sha256 as sha256_file  # one file hasher

FORMAT_NAME = "dd-pairs"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.tar"
RECEIPT_PATTERN = "shard-{:06d}.json"
PARTIAL_SUFFIX = ".partial"
KEY_DIGITS = 10  # record keys are zero-padded global indices: lexicographic = numeric order
SETTINGS_KEY_CHARS = 16
HASH_CHUNK_BYTES = 1 << 20
TAR_MTIME = 0  # fixed metadata: bytes depend only on the records; an int, as a float
# mtime makes tarfile add a 1 kB PAX header to every member
# Three tar members a record (each costs a 512-byte header plus padding to 512 bytes):
# ``<key>.json`` {"index", "label", "teacher"}, ``<key>.noise.npy`` [n, C],
# ``<key>.tokens.npy`` [n].
FIELDS = ("json", "noise.npy", "tokens.npy")


class ShardError(RuntimeError):
    """A pair folder that cannot be used as is (mismatch, corruption, missing shards)."""


@dataclass(frozen=True)
class ShardRange:
    """Shard ``shard`` holds global indices ``[start, stop)``."""

    shard: int
    start: int
    stop: int

    @property
    def num_records(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return SHARD_PATTERN.format(self.shard)

    @property
    def receipt_name(self) -> str:
        return RECEIPT_PATTERN.format(self.shard)


def plan_shards(num_pairs: int, shard_size: int) -> list[ShardRange]:
    """Shards by global index range: the same set whatever the device count."""
    return [
        ShardRange(k, start, min(start + shard_size, num_pairs))
        for k, start in enumerate(range(0, num_pairs, shard_size))
    ]


# --- Records ---------------------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_record(
    index: int, label: int, noise: torch.Tensor, tokens: torch.Tensor, teacher: str
) -> dict[str, Any]:
    """One webdataset sample; ``noise``/``tokens`` keep their dtypes (stored as .npy)."""
    meta = {"index": int(index), "label": int(label), "teacher": teacher}
    return {
        "__key__": f"{index:0{KEY_DIGITS}d}",
        "json": json.dumps(meta, separators=(",", ":")).encode(),
        "noise.npy": _npy_bytes(noise.detach().cpu().numpy()),
        "tokens.npy": _npy_bytes(tokens.detach().cpu().numpy()),
    }


def decode_record(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample (bytes per field) -> index, label, noise, tokens, teacher."""
    missing = [name for name in FIELDS if name not in sample]
    if missing:
        raise ShardError(f"record {sample.get('__key__')!r} lacks fields {missing}")
    meta = json.loads(bytes(sample["json"]))
    if sample.get("__key__") not in (None, f"{meta['index']:0{KEY_DIGITS}d}"):
        raise ShardError(f"record key {sample['__key__']!r} does not match index {meta['index']}")
    return {
        "index": int(meta["index"]),
        "label": int(meta["label"]),
        "noise": torch.from_numpy(np.load(io.BytesIO(sample["noise.npy"]), allow_pickle=False)),
        "tokens": torch.from_numpy(np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)),
        "teacher": meta["teacher"],
    }


def read_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of one shard, in order, read with webdataset (any read error is raised)."""
    dataset = wds.WebDataset(
        str(path), shardshuffle=False, handler=wds.reraise_exception, empty_check=False
    )
    for sample in dataset:
        yield decode_record(sample)


# What to do about a damaged or unreadable manifest (dd train's reader, dd verify-shards).
REWRITE_MANIFEST = (
    "delete it and rerun the same `dd generate` command (it checks the shards against their "
    "receipts and writes the manifest again)"
)


class _HashingReader:
    """A shard file read front to back (tarfile's stream mode), hashing every byte it reads:
    the reader that decodes a shard checks its sha256 without reading it twice."""

    def __init__(self, handle):
        self.handle, self.hasher = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.hasher.update(data)
        return data

    def hexdigest(self) -> str:
        """The sha256 of the whole file: reads what tarfile left (the end-of-archive padding)."""
        while self.read(HASH_CHUNK_BYTES):
            pass
        return self.hasher.hexdigest()

    def __str__(self) -> str:  # webdataset appends the stream to an error's message
        return self.handle.name


# Decoding a damaged record or tar header fails in many ways: tarfile's errors, bad JSON or
# .npy (ValueError), a missing JSON key (KeyError), or a member cut short (EOFError, OSError).
DECODE_ERRORS = (tarfile.TarError, ValueError, KeyError, EOFError, OSError)


def read_checked_shard(path: str | Path, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The records of one shard whose manifest (or receipt) ``entry`` gives its ``bytes``,
    ``sha256`` and ``num_records``: the size is checked before reading, the sha256 and the
    count once the records are read. Every failure is a ``ShardError`` naming the file. Records
    are yielded as they are read: a consumer must drop them all if the shard fails at its end."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path} is missing (the manifest lists it)")
    size = path.stat().st_size  # free, before any reading
    if size != entry["bytes"]:
        raise ShardError(
            f"{path} is truncated or altered: {size} bytes, the manifest says {entry['bytes']}"
        )
    count = 0
    with open(path, "rb") as handle:
        reader = _HashingReader(handle)
        try:
            members = wds.tariterators.tar_file_iterator(reader)
            named = ({**member, "__url__": str(path)} for member in members)
            for sample in wds.tariterators.group_by_keys(named):
                record = decode_record(sample)
                count += 1
                yield record
        except (ShardError, *DECODE_ERRORS) as error:
            raise ShardError(
                f"{path} is unreadable or corrupt: {type(error).__name__}: {error}"
            ) from error
        digest = reader.hexdigest()
    if digest != entry["sha256"]:
        raise ShardError(
            f"{path} is corrupt: sha256 {digest[:16]}.., the manifest says {entry['sha256'][:16]}.."
        )
    if count != entry["num_records"]:
        raise ShardError(f"{path}: {count} records, the manifest says {entry['num_records']}")


# --- Files -----------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """``write_text_atomic`` of ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file of this call's own (ranks finishing together may both finalize
    the manifest: one shared temporary name made the slower ``os.replace`` fail), then rename:
    a reader sees the old file or the new one, never part of one."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    try:
        with open(partial, "w") as handle:  # mode from the umask, as the shards' files
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShardError(f"{path}: unreadable ({error})") from error


class OpenShard:
    """One shard being written: records go to a ``.partial`` file, ``close`` publishes it."""

    def __init__(
        self, folder: Path, shard: ShardRange, identity: RunIdentity, device_type: str = "cpu"
    ):
        """``device_type``: where the records were computed (``cuda``, ``cpu``), recorded in the
        receipt and the manifest: ``dd verify-shards`` says so when it re-maps elsewhere."""
        self.folder, self.shard, self.identity = folder, shard, identity
        self.device_type = device_type
        self.partial_path = folder / f".{shard.name}{PARTIAL_SUFFIX}"
        self._handle = open(self.partial_path, "wb")
        self._writer = wds.TarWriter(self._handle, encoder=False, mtime=TAR_MTIME)
        self.next_index = shard.start

    @property
    def complete(self) -> bool:
        return self.next_index == self.shard.stop

    def write(self, record: dict[str, Any]) -> None:
        index = int(record["__key__"])
        if index != self.next_index:
            raise ShardError(
                f"{self.shard.name}: expected record {self.next_index}, got {index} "
                "(records of a shard must arrive in index order)"
            )
        self._writer.write(record)
        self.next_index += 1

    def close(self) -> dict[str, Any]:
        """Finish the tar, write the receipt, publish the shard; returns the receipt."""
        if not self.complete:
            raise ShardError(
                f"{self.shard.name}: closing after {self.next_index - self.shard.start} of "
                f"{self.shard.num_records} records"
            )
        self._writer.close()  # ends the tar stream; the handle stays ours
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        receipt = {
            "shard": self.shard.shard,
            "file": self.shard.name,
            "first_index": self.shard.start,
            "num_records": self.shard.num_records,
            "bytes": self.partial_path.stat().st_size,
            "sha256": sha256_file(self.partial_path),
            "teacher": self.identity.teacher_fingerprint,
            "settings_key": self.identity.settings_key,
            "device": self.device_type,
        }
        write_json_atomic(self.folder / self.shard.receipt_name, receipt)
        os.replace(self.partial_path, self.folder / self.shard.name)
        return receipt

    def abort(self) -> None:
        """Drop the partial shard. The tar writer is closed first (it ends the stream into the
        still-open file): closing only the file left the writer to fail when collected."""
        try:
            # A failing close (the disk that failed the run) must not hide the original error.
            with contextlib.suppress(OSError, ValueError):
                self._writer.close()
            self._handle.close()
        finally:
            self.partial_path.unlink(missing_ok=True)


# --- Identity, manifest, resume --------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """Everything a record's content depends on; two runs may share a folder iff equal."""

    teacher_fingerprint: str
    teacher_family: str
    settings: dict[str, Any]  # sampling, flow, pairs, shard_size, shapes, record format

    @property
    def settings_key(self) -> str:
        text = json.dumps(self.settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:SETTINGS_KEY_CHARS]


def describe_difference(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list:
    """Dotted keys whose values differ between two nested settings mappings."""
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_difference(a, b, f"{prefix}{key}.")
        elif a != b or type(a) is not type(b):  # 2 == 2.0, but their JSON (the key) differs
            out.append(f"{prefix}{key}: this run {a!r}, folder {b!r}")
    return out


def _refuse(folder: Path, what: str, theirs_teacher: str, theirs_key: str, identity, extra=()):
    lines = [
        f"{folder} holds {what} of another teacher or other settings; refusing to mix them.",
        f"  teacher fingerprint: this run {identity.teacher_fingerprint}, folder {theirs_teacher}",
        f"  settings key:        this run {identity.settings_key}, folder {theirs_key}",
        *[f"  {line}" for line in extra],
        "Use another output.folder, or delete the folder to regenerate it.",
    ]
    raise ShardError("\n".join(lines))


def check_folder(folder: Path, identity: RunIdentity, shards: list[ShardRange]) -> None:
    """Read-only: refuse a folder whose manifest or receipts name another teacher/settings,
    and shard files this plan does not produce. Cheap (no hashing)."""
    if not folder.exists():
        return
    if not folder.is_dir():  # else a FileExistsError deep in the run, once the ranks started
        raise ShardError(f"output.folder {folder} is a file, not a folder: give another one")
    manifest_path = folder / MANIFEST_NAME
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        theirs_fp = manifest.get("teacher", {}).get("fingerprint")
        theirs_key = manifest.get("settings_key")
        if (theirs_fp, theirs_key) != (identity.teacher_fingerprint, identity.settings_key):
            diff = describe_difference(identity.settings, manifest.get("settings", {}))
            _refuse(folder, "pairs (manifest.json)", theirs_fp, theirs_key, identity, diff)
    planned = {s.name for s in shards} | {s.receipt_name for s in shards}
    for path in sorted(folder.glob("shard-*")):
        if path.name not in planned:
            raise ShardError(
                f"{path} is not a shard of this run's plan ({len(shards)} shards): "
                "the folder holds another data set; use another output.folder"
            )
        if path.suffix == ".json":
            receipt = read_json(path)
            if (receipt.get("teacher"), receipt.get("settings_key")) != (
                identity.teacher_fingerprint,
                identity.settings_key,
            ):
                _refuse(
                    folder,
                    f"a shard ({path.name})",
                    receipt.get("teacher"),
                    receipt.get("settings_key"),
                    identity,
                )


def check_shard_size(folder: Path, shard: ShardRange, receipt: dict[str, Any]) -> None:
    """The cheap half of ``verify_shard_file``: the receipt's range and the file's size."""
    path = folder / shard.name
    if (receipt.get("first_index"), receipt.get("num_records")) != (
        shard.start,
        shard.num_records,
    ):
        raise ShardError(
            f"{path}: receipt covers indices from {receipt.get('first_index')} "
            f"({receipt.get('num_records')} records), the plan [{shard.start}, {shard.stop})"
        )
    size = path.stat().st_size
    if size != receipt["bytes"]:
        raise ShardError(
            f"{path} is truncated or altered: {size} bytes, its receipt says {receipt['bytes']}; "
            "delete it (and its .json receipt) to regenerate it"
        )


def check_shard_digest(folder: Path, shard: ShardRange, receipt: dict[str, Any]) -> None:
    """The costly half of ``verify_shard_file``: the file's sha256 against the receipt's."""
    path = folder / shard.name
    digest = sha256_file(path)
    if digest != receipt["sha256"]:
        raise ShardError(
            f"{path} is corrupt: sha256 {digest[:16]}.., its receipt says "
            f"{receipt['sha256'][:16]}..; delete it (and its .json receipt) to regenerate it"
        )


def verify_shard_file(folder: Path, shard: ShardRange, receipt: dict[str, Any]) -> None:
    """Raise ``ShardError`` naming the shard unless its file matches its receipt exactly."""
    check_shard_size(folder, shard, receipt)
    check_shard_digest(folder, shard, receipt)


class FolderLock:
    """One run per output folder: an exclusive ``flock`` on ``folder/.dd-<command>.lock``
    (``dd generate``'s rank 0 holds it from its scan to the end of the run: a second run's
    scan deleted the first one's ``.partial`` files under it; ``dd train``'s while it writes).
    The kernel drops the lock when the process ends, however it ends: no stale lock after a
    kill. The file stays (removing it would let a run that opens the path later lock another
    file)."""

    def __init__(self, folder: Path, command: str = "dd generate"):
        self.folder, self.command = folder, command
        self.path = folder / f".{command.replace(' ', '-')}.lock"
        self.handle = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process"
            handle.close()
            raise ShardError(
                f"{self.folder} is being written by another {self.command} run ({holder}); "
                "wait for it to end (rerunning then resumes), or give another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


@dataclass(frozen=True)
class FolderPlan:
    """What a resume found: shards published (sizes checked, sha256 not yet) and to produce."""

    finished: list[int]
    pending: list[int]


def scan_folder(folder: Path, identity: RunIdentity, shards: list[ShardRange]) -> FolderPlan:
    """The cheap part of a resume (one process: rank 0): refuse another run's folder, remove
    leftovers of a crash (``.partial`` files, receipts without a shard), check each finished
    shard's receipt and size. Its sha256, the costly part, is ``hash_finished``'s (every rank
    hashes a share: docs/pairs.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    check_folder(folder, identity, shards)
    for leftover in folder.glob(f".*{PARTIAL_SUFFIX}"):
        leftover.unlink()
    finished, pending = [], []
    for shard in shards:
        tar_path, receipt_path = folder / shard.name, folder / shard.receipt_name
        if tar_path.exists():
            if not receipt_path.exists():
                raise ShardError(
                    f"{tar_path} has no receipt ({receipt_path.name}): it was not published "
                    "by a generation run; delete it to regenerate it"
                )
            check_shard_size(folder, shard, read_json(receipt_path))
            finished.append(shard.shard)
        else:
            receipt_path.unlink(missing_ok=True)  # receipt written, crash before the rename
            pending.append(shard.shard)
    return FolderPlan(finished, pending)


def hash_finished(folder: Path, shards: list[ShardRange], *, progress: bool = False) -> None:
    """Check the sha256 of finished shards against their receipts (``ShardError`` naming the
    first mismatch, never silently regenerated); ``progress``: a bar over the bytes."""
    sizes = [(folder / s.name).stat().st_size for s in shards]
    with tqdm(
        total=sum(sizes),
        unit="B",
        unit_scale=True,
        desc="checking finished shards",
        disable=not (progress and shards),
        dynamic_ncols=True,
    ) as bar:
        for shard, size in zip(shards, sizes, strict=True):
            check_shard_digest(folder, shard, read_json(folder / shard.receipt_name))
            bar.update(size)


def open_manifest(folder: Path, manifest_base: dict[str, Any], pending: list[int]) -> None:
    """Write an ``in_progress`` manifest unless the folder is complete: a ``complete`` manifest
    whose shard was deleted (to regenerate it) becomes ``in_progress`` too, so that readers and
    ``dd demo`` do not take the folder as finished if the regeneration stops."""
    manifest_path = folder / MANIFEST_NAME
    finished = manifest_path.exists() and read_json(manifest_path).get("status") == "complete"
    if pending or not finished:
        write_json_atomic(manifest_path, {**manifest_base, "status": "in_progress", "shards": []})


def manifest_base(
    identity: RunIdentity,
    *,
    teacher_spec: dict[str, Any],
    num_pairs: int,
    shard_size: int,
    recipe: dict[str, Any],
) -> dict[str, Any]:
    num_shards = -(-num_pairs // shard_size)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "teacher": {
            "fingerprint": identity.teacher_fingerprint,
            "family": identity.teacher_family,
            "spec": teacher_spec,
        },
        "settings_key": identity.settings_key,
        "settings": identity.settings,
        "counts": {"num_pairs": num_pairs, "num_shards": num_shards, "shard_size": shard_size},
        "recipe": recipe,
        "fields": list(FIELDS),
    }


def finalize_if_complete(folder: Path, shards: list[ShardRange]) -> bool:
    """Write the complete manifest once every shard is published (any rank may call it; the
    content is the same whoever writes it). Returns whether the data set is complete."""
    receipts = []
    for shard in shards:
        receipt_path = folder / shard.receipt_name
        if not (folder / shard.name).exists() or not receipt_path.exists():
            return False
        receipts.append(read_json(receipt_path))
    manifest = read_json(folder / MANIFEST_NAME)
    manifest["status"] = "complete"
    manifest["shards"] = [
        {
            k: r[k]
            for k in ("file", "first_index", "num_records", "bytes", "sha256", "device")
            if k in r
        }
        for r in receipts
    ]  # ("device": receipts written before it was recorded have none)
    manifest["counts"]["total_bytes"] = sum(r["bytes"] for r in receipts)
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return True


def shards_from_manifest(manifest: dict[str, Any]) -> list[ShardRange]:
    counts = manifest["counts"]
    return plan_shards(counts["num_pairs"], counts["shard_size"])


def as_plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
