"""The memory-mapped copy of a pair folder (dd/mapped_pairs.py, ``pairs.memory_map``): the same
pairs as an in-memory load, mapped from files that later loads map without reading a shard,
a copy per pair identity, nothing half-made after a failure, and refusals before any write."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch

import dd.data
import dd.mapped_pairs
from data_gen.config import (
    GenerateRecipe,
    OutputSettings,
    PairSettings,
    RunSettings,
    SamplingOverrides,
)
from data_gen.engine import run_generation
from data_gen.shards import read_shard
from dd.data import load_pairs, split_heldout
from dd.mapped_pairs import (
    LAYOUT_NAME,
    PARTIAL_SUFFIX,
    copy_lock,
    identity_key,
    make_copy,
    open_copy,
)
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.tiny.registry import tiny_sampling
from tests.shard_edit import rewrite_shard

TEACHER = "var-digits"
NUM_PAIRS = 24


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(TeacherSpec(tiny=TEACHER))


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory):
    """float16 noise, the paper recipes' advice for VAR: the copy keeps the stored dtype."""
    folder = tmp_path_factory.mktemp("mapped") / "pairs"
    recipe = GenerateRecipe(
        teacher=TeacherSpec(tiny=TEACHER),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling(TEACHER))),
        pairs=PairSettings(num_pairs=NUM_PAIRS, seed=0, noise_dtype="float16"),
        output=OutputSettings(folder=str(folder), shard_size=8),
        run=RunSettings(batch_size=8, accelerator="cpu", devices=1, progress_bar=False),
    )
    assert run_generation(recipe).complete
    return folder


def assert_same_pairs(a, b) -> None:
    for name in ("index", "labels", "noise", "tokens"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def made(root) -> list[str]:
    """What a load left in the copies' folder besides the lock files (kept: see copy_lock)."""
    return sorted(p.name for p in root.iterdir() if p.suffix != ".lock")


def mapping_modes() -> dict[str, set[str]]:
    """The files this process maps and their mappings' permissions (Linux)."""
    modes: dict[str, set[str]] = {}
    with open("/proc/self/maps") as maps:
        for fields in (line.split() for line in maps):
            if len(fields) == 6:
                modes.setdefault(fields[-1], set()).add(fields[1])
    return modes


def mapped_files() -> set[str]:
    return set(mapping_modes())


def test_the_copy_is_the_pairs_mapped_from_files_that_later_loads_map(
    teacher, pair_folder, tmp_path, monkeypatch
):
    fingerprint = teacher.fingerprint()
    in_memory = load_pairs(pair_folder, teacher_fingerprint=fingerprint)
    listing = sorted(p.name for p in pair_folder.iterdir())
    root = tmp_path / "mm"
    mapped = load_pairs(pair_folder, teacher_fingerprint=fingerprint, memory_map=root)
    assert_same_pairs(mapped, in_memory)
    assert mapped.noise.dtype == torch.float16
    copy = root / identity_key(dd.data.pair_identity(pair_folder))
    assert made(root) == [copy.name]  # no partial folder left
    assert {str(copy / f"{name}.bin") for name in ("labels", "noise", "tokens")} <= mapped_files()
    assert sorted(p.name for p in pair_folder.iterdir()) == listing  # the pair folder untouched

    # A later load maps the copy without reading a shard.
    def no_shards(path, *entry):
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(dd.data, "read_checked_shard", no_shards)
    again = load_pairs(pair_folder, teacher_fingerprint=fingerprint, memory_map=root)
    assert_same_pairs(again, in_memory)
    # Read-only shared mappings (r--s): a private writable one is charged in full to every
    # process' commit budget, so a copy larger than memory could not be mapped.
    modes = mapping_modes()
    for name in ("labels", "noise", "tokens"):
        assert modes[str(copy / f"{name}.bin")] == {"r--s"}, name
    # The training and held-out sets are views of the mapped tensors.
    train, heldout = split_heldout(mapped, 4)
    assert heldout.noise.untyped_storage().data_ptr() == mapped.noise.untyped_storage().data_ptr()
    assert len(train) == NUM_PAIRS - 4


def test_other_pairs_in_the_same_folder_get_a_copy_of_their_own(teacher, pair_folder, tmp_path):
    """Records rewritten (their shard's sha256 in the manifest with them): the stale copy is
    not mapped; a new copy of the new records is made beside it."""
    fingerprint = teacher.fingerprint()
    pairs = tmp_path / "pairs"
    shutil.copytree(pair_folder, pairs)
    root = tmp_path / "mm"
    before = load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
    records = list(read_shard(pairs / "shard-000001.tar"))
    records[0]["tokens"][0] = (int(records[0]["tokens"][0]) + 1) % 64
    rewrite_shard(pairs, 1, records)
    after = load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
    assert_same_pairs(after, load_pairs(pairs, teacher_fingerprint=fingerprint))
    assert not torch.equal(after.tokens, before.tokens)
    assert len([p for p in root.iterdir() if (p / LAYOUT_NAME).is_file()]) == 2


def test_a_failed_copy_leaves_nothing_and_a_damaged_one_is_refused(teacher, pair_folder, tmp_path):
    fingerprint = teacher.fingerprint()
    pairs = tmp_path / "pairs"
    shutil.copytree(pair_folder, pairs)
    root = tmp_path / "mm"
    # Refused before anything is written: another teacher's pairs, an unfinished folder.
    with pytest.raises(ValueError, match="not of the teacher being distilled"):
        load_pairs(pairs, teacher_fingerprint="0" * 16, memory_map=root)
    with pytest.raises(FileNotFoundError, match="not a finished pair folder"):
        load_pairs(tmp_path, teacher_fingerprint=fingerprint, memory_map=root)
    assert not root.exists()
    # A record that fails a check half way through the copy: the error, and no copy at all.
    records = list(read_shard(pairs / "shard-000002.tar"))
    good = records[1]["noise"].clone()
    records[1]["noise"] = records[1]["noise"][:1]
    rewrite_shard(pairs, 2, records)
    with pytest.raises(ValueError, match="record 17's noise"):
        load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
    assert made(root) == []
    records[1]["noise"] = good
    rewrite_shard(pairs, 2, records)
    mapped = load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
    assert_same_pairs(mapped, load_pairs(pairs, teacher_fingerprint=fingerprint))
    # A truncated file (a disk filled up, a copy interrupted by hand) is named, not mapped.
    copy = root / made(root)[0]
    noise = copy / "noise.bin"
    noise.write_bytes(noise.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"noise.bin: \d+ bytes, the copy's layout needs \d+"):
        load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
    # A layout of other pairs under this key (edited by hand) is refused.
    noise.unlink()
    shutil.rmtree(copy)
    load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
    layout = json.loads((copy / LAYOUT_NAME).read_text())
    layout["identity"]["num_pairs"] = 1
    (copy / LAYOUT_NAME).write_text(json.dumps(layout))
    with pytest.raises(ValueError, match="is a copy of other pairs"):
        load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)


def test_processes_started_together_wait_for_one_copy(teacher, pair_folder, tmp_path, monkeypatch):
    """While a process holds the copy's lock and makes the copy, another load waits and writes
    nothing of its own; once the lock is released it maps that copy without reading a shard."""
    fingerprint = teacher.fingerprint()
    root = tmp_path / "mm"
    root.mkdir()
    identity = dd.data.pair_identity(pair_folder)
    copy = root / identity_key(identity)
    loaded = {}

    def load() -> None:
        loaded["pairs"] = load_pairs(pair_folder, teacher_fingerprint=fingerprint, memory_map=root)

    with copy_lock(root / f".{copy.name}.lock"):
        waiting = threading.Thread(target=load)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()  # blocked on the lock
        assert sorted(p.name for p in root.iterdir()) == [f".{copy.name}.lock"]  # nothing written
        make_copy(pair_folder, root, copy, identity, fingerprint)  # the holder's copy

        def no_shards(path, *entry):
            raise AssertionError(f"the waiting load read {path}")

        monkeypatch.setattr(dd.data, "read_checked_shard", no_shards)
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    monkeypatch.undo()
    assert_same_pairs(loaded["pairs"], load_pairs(pair_folder, teacher_fingerprint=fingerprint))


def test_without_the_lock_the_first_finished_copy_wins(teacher, pair_folder, tmp_path):
    """Where flock does not hold (some network file systems), two processes may both make the
    copy: the second rename fails on the first's folder, and the second maps the first's copy
    and removes its own."""
    fingerprint = teacher.fingerprint()
    root = tmp_path / "mm"
    root.mkdir()
    identity = dd.data.pair_identity(pair_folder)
    copy = root / identity_key(identity)
    make_copy(pair_folder, root, copy, identity, fingerprint)
    first = (copy / "noise.bin").stat().st_ino
    make_copy(pair_folder, root, copy, identity, fingerprint)
    assert (copy / "noise.bin").stat().st_ino == first  # the first copy stays
    assert made(root) == [copy.name]  # the second's partial folder is gone
    mapped = load_pairs(pair_folder, teacher_fingerprint=fingerprint, memory_map=root)
    assert_same_pairs(mapped, load_pairs(pair_folder, teacher_fingerprint=fingerprint))


def test_copies_are_allocated_whole_and_map_beyond_memory(
    teacher, pair_folder, tmp_path, monkeypatch
):
    """The copy's files are allocated in full before anything is written through their
    mappings (a full disk is then an OSError, not a SIGBUS in a sparse file's mapping); and a
    copy larger than this machine's memory and swap maps (read-only shared pages are not
    charged to the commit budget, as a private writable mapping's are): a sparse file stands
    in for it."""
    root = tmp_path / "mm"
    allocated = []

    def allocate_only(folder, *, teacher_fingerprint, allocate):
        allocate("noise", (1000, 16, 8), torch.float32)
        (path,) = root.glob(f".*{PARTIAL_SUFFIX}/noise.bin")
        allocated.append(path.stat().st_blocks * 512 >= path.stat().st_size == 1000 * 16 * 8 * 4)
        raise RuntimeError("stopped after the allocation")

    monkeypatch.setattr(dd.mapped_pairs, "fill_pairs", allocate_only)
    with pytest.raises(RuntimeError, match="stopped after the allocation"):
        load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint(), memory_map=root)
    assert allocated == [True] and made(root) == []
    meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    memory_bytes = sum(int(meminfo[k].split()[0]) * 1024 for k in ("MemTotal", "SwapTotal"))
    rows = (memory_bytes + 2**30) // (16 * 8 * 4) + 1  # float32 noise [rows, 16, 8]
    big = tmp_path / "big"
    big.mkdir()
    fields = {"labels": ([rows], torch.long), "noise": ([rows, 16, 8], torch.float32),
              "tokens": ([rows, 16, 8], torch.float32)}  # fmt: skip
    for name, (shape, dtype) in fields.items():
        with open(big / f"{name}.bin", "wb") as handle:  # sparse: no disk used
            handle.truncate(int(torch.Size(shape).numel()) * dtype.itemsize)
    described = {n: {"shape": sh, "dtype": str(dt)} for n, (sh, dt) in fields.items()}
    layout = {"identity": {"pairs": "sparse"}, "fields": described}
    (big / LAYOUT_NAME).write_text(json.dumps(layout))
    pairs = open_copy(big, {"pairs": "sparse"})
    assert pairs.noise.shape == (rows, 16, 8)
    assert float(pairs.noise[-1].abs().sum()) == 0.0


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01  # a low bit: "{" becomes "z", a float moves by one ulp or so
    path.write_bytes(bytes(data))


def member_offset(path: Path, name: str) -> int:
    """Where the data of tar member ``name`` starts in the file."""
    with tarfile.open(path) as archive:
        return archive.getmember(name).offset_data


def test_a_damaged_shard_is_named_in_memory_and_mapped(teacher, pair_folder, tmp_path):
    """The manifest's size and sha256 of every shard are checked as it is read (one pass):
    a flipped byte in a record's noise loaded silently, a truncated shard was refused only by
    the total count, a bad JSON member or an empty shard by a bare decoding error. Each is
    now named, with what to do (as is a shard short of a record under matching hashes); the
    memory-mapped load refuses it too and leaves no copy."""
    fingerprint = teacher.fingerprint()
    shard = "shard-000001.tar"  # records 8..15
    noise_at = member_offset(pair_folder / shard, "0000000009.noise.npy") + 128  # past the header
    json_at = member_offset(pair_folder / shard, "0000000009.json")
    damages = {
        "a noise value": (lambda p: flip_byte(p, noise_at), "is corrupt: sha256"),
        "a record's JSON": (lambda p: flip_byte(p, json_at), "unreadable or corrupt: JSONDec"),
        "the end": (lambda p: p.write_bytes(p.read_bytes()[:-512]), "truncated or altered"),
        "everything": (lambda p: p.write_bytes(b""), "truncated or altered: 0 bytes"),
        # a record dropped, the size and sha256 made to match: the count names the shard
        "a record": (lambda p: rewrite_shard(p.parent, 1, list(read_shard(p))[:-1]), "7 records"),
    }
    for what, (damage, message) in damages.items():
        pairs = tmp_path / what.replace(" ", "_").replace("'", "")
        shutil.copytree(pair_folder, pairs)
        damage(pairs / shard)
        expected = rf"{re.escape(str(pairs / shard))}.*{message}.*dd verify-shards"
        with pytest.raises(ValueError, match=expected):
            load_pairs(pairs, teacher_fingerprint=fingerprint)
        root = tmp_path / f"mm_{pairs.name}"
        with pytest.raises(ValueError, match=expected):
            load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=root)
        assert made(root) == [], what


def test_a_copies_folder_whose_parent_does_not_exist_is_refused(teacher, pair_folder, tmp_path):
    """The paper recipes' placeholder (/local_ssd/dd_pairs/<name>) left as is was created on
    the root file system and filled with the copy: a missing parent is refused, nothing made."""
    placeholder = tmp_path / "local_ssd" / "dd_pairs" / "var"
    with pytest.raises(ValueError, match=r"parent .*local_ssd/dd_pairs does not exist; create it"):
        load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint(), memory_map=placeholder)
    assert not (tmp_path / "local_ssd").exists()
