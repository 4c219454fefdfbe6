"""Training data for stage 2: the pair shards of stage 1, in a resumable, seeded order.

``load_pairs`` reads a finished pair folder (``dd generate``) with webdataset, refusing shards
of another teacher or an unfinished run, and damaged shards (each one's size, sha256 and record
count are checked against the manifest as it is read). The last ``num_heldout`` pairs (by
global index) are held out for token agreement; the rest are the training set.

Order (``BatchOrder``): global step ``s`` belongs to epoch ``s // steps_per_epoch``; an epoch
is a permutation of the training pairs drawn from ``(seed, epoch)``; global batch ``s`` is the
next ``global_batch_size`` pairs of it (the remainder of an epoch is dropped) and its samples'
timesteps are drawn from ``(seed, s)``. Rank ``r`` of ``W`` takes the ``r``-th slice of every
global batch. So the data of step ``s`` depends only on ``(seed, s)``: a run resumed at step
``s`` continues exactly where it stopped (nothing seen twice, nothing skipped), whatever the
number of processes.

Memory: the pairs are held once (``split_heldout`` gives views), the noise in its stored
dtype (``pairs.noise_dtype``, float64 as float32; cast to float32 batch by batch), filled in
place (no second copy while loading). 1.2M pairs: LlamaGen (256 x 8) 9.8 GB of float32 noise,
4.9 GB of float16; VAR-d16 (680 x 32) 104 GB, 52 GB; the tokens as int64 add 2.5 and 6.5 GB.
In memory (the default) that is per process: a DDP node of 8 GPUs holds 8 copies. With
``memory_map`` (``pairs.memory_map`` of a recipe) the copy is in files, mapped read-only: the
processes of a node share it in the page cache, and the kernel pages it in from disk when it
does not fit in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from data_gen.shards import MANIFEST_NAME, REWRITE_MANIFEST, ShardError, read_checked_shard
from teachers.protocol import ContinuousSamplingConfig, SamplingConfig

SEED_STRIDE = 1_000_003  # separates the epoch-permutation and timestep streams of one seed


@dataclass(frozen=True)
class PairSet:
    """Pairs sorted by global index: ``labels [N]``, ``noise [N, n, C]`` (as stored: float16
    or float32; float64 as float32, what training reads), ``tokens [N, n]`` long
    (continuous-token teachers: float32 ``[N, n, C]``)."""

    index: torch.Tensor
    labels: torch.Tensor
    noise: torch.Tensor
    tokens: torch.Tensor

    def __len__(self) -> int:
        return self.index.numel()

    def subset(self, rows: torch.Tensor | slice) -> PairSet:
        """The pairs of ``rows``: a copy for an index tensor, views for a slice."""
        return PairSet(self.index[rows], self.labels[rows], self.noise[rows], self.tokens[rows])


def finished_manifest(folder: str | Path, *, teacher_fingerprint: str) -> dict:
    """The manifest of a finished pair folder of this teacher; a clear error otherwise."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST_NAME}: not a finished pair folder (rerun the same "
            "`dd generate` command to finish it)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as error:  # bad JSON or bad UTF-8
        raise ValueError(f"{manifest_path} is unreadable ({error}): {REWRITE_MANIFEST}") from error
    if manifest.get("status") != "complete":
        raise ValueError(
            f"{folder}: the pair run is {manifest.get('status')!r}, not complete (rerun the same "
            "`dd generate` command to finish it)"
        )
    theirs = manifest["teacher"]["fingerprint"]
    if theirs != teacher_fingerprint:
        raise ValueError(
            f"{folder} holds pairs of teacher {theirs} ({manifest['teacher'].get('spec')}), "
            f"not of the teacher being distilled ({teacher_fingerprint})"
        )
    return manifest


# What to do about a damaged shard, or manifest: `dd generate` keeps the shards that match
# their receipts, makes the missing ones and writes the complete manifest again.
REGENERATE = (
    "run `dd verify-shards` on the folder to list the damaged shards, delete them and their "
    ".json receipts, and rerun the same `dd generate` command to regenerate them"
)


def pair_records(folder: str | Path, *, teacher_fingerprint: str) -> Iterator[dict]:
    """The records of a finished folder, shard by shard (not in index order), each checked
    against the teacher's fingerprint; each shard's size against the manifest before it is
    read, its sha256 and record count once it is read, the total count at the end. A failure
    comes after the records read before it: a consumer keeps none of them."""
    manifest = finished_manifest(folder, teacher_fingerprint=teacher_fingerprint)
    return _checked_records(Path(folder), manifest, teacher_fingerprint)


def _checked_records(folder: Path, manifest: dict, teacher_fingerprint: str) -> Iterator[dict]:
    count = 0
    for entry in _manifest_shards(folder, manifest):
        shard = folder / entry["file"]
        try:
            for record in read_checked_shard(shard, entry):
                if record["teacher"] != teacher_fingerprint:
                    raise ValueError(
                        f"{shard}: record {record['index']} is of teacher {record['teacher']}"
                    )
                count += 1
                yield record
        except ShardError as error:  # dd train reports ValueErrors in one line
            raise ValueError(f"{error}: {REGENERATE}") from error
    expected = manifest["counts"]["num_pairs"]
    if count != expected:
        raise ValueError(f"{folder}: {count} records, the manifest says {expected}")


def _manifest_shards(folder: Path, manifest: dict) -> list[dict]:
    """The complete manifest's shard entries, one per shard of its counts, each with what
    ``read_checked_shard`` checks."""
    entries = manifest.get("shards")
    expected = manifest["counts"]["num_shards"]
    keys = {"file", "bytes", "sha256", "num_records"}
    listed = entries if isinstance(entries, list) else []
    if len(listed) != expected or not all(
        isinstance(entry, dict) and keys <= entry.keys() for entry in listed
    ):
        raise ValueError(
            f"{folder / MANIFEST_NAME} does not list its {expected} shards with their "
            f"{', '.join(sorted(keys))}: {REWRITE_MANIFEST}"
        )
    return listed


def load_pairs(
    folder: str | Path, *, teacher_fingerprint: str, memory_map: str | Path | None = None
) -> PairSet:
    """Every pair of a finished folder, in index order (``pair_records``' checks).

    ``memory_map=None``: in this process' memory. A folder: a copy in files there, memory-mapped
    read-only (``dd.mapped_pairs``): made on the first load of these pairs, then mapped by every
    later load, so the processes of a node share one copy in the page cache."""
    if memory_map is not None:
        from dd.mapped_pairs import mapped_pairs

        return mapped_pairs(folder, memory_map, teacher_fingerprint=teacher_fingerprint)
    return fill_pairs(folder, teacher_fingerprint=teacher_fingerprint, allocate=_allocate_in_memory)


Allocate = Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor]


def _allocate_in_memory(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def fill_pairs(folder: str | Path, *, teacher_fingerprint: str, allocate: Allocate) -> PairSet:
    """Read a finished folder's records (``pair_records``' checks) into tensors that
    ``allocate(name, shape, dtype)`` gives once: record ``i`` (a complete folder holds indices
    ``0..N-1``) into row ``i``, the noise in its stored dtype (float64 as float32). A record of
    another shape or dtype than the first is refused."""
    manifest = finished_manifest(folder, teacher_fingerprint=teacher_fingerprint)
    records = _checked_records(Path(folder), manifest, teacher_fingerprint)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{folder} holds no pairs")
    count = manifest["counts"]["num_pairs"]
    noise, tokens = first["noise"], _stored_tokens(first["tokens"])
    pairs = PairSet(
        index=torch.arange(count),
        labels=allocate("labels", (count,), torch.long),
        noise=allocate("noise", (count, *noise.shape), _held_dtype(noise.dtype)),
        tokens=allocate("tokens", (count, *tokens.shape), tokens.dtype),
    )
    seen = torch.zeros(count, dtype=torch.bool)
    for record in itertools.chain([first], records):
        index = record["index"]
        if not 0 <= index < count or seen[index]:
            raise ValueError(f"{folder}: record index {index} is out of 0..{count - 1} or repeated")
        for name in ("noise", "tokens"):
            value, like = record[name], first[name]
            if value.shape != like.shape or value.dtype != like.dtype:
                raise ValueError(
                    f"{folder}: record {index}'s {name} is {value.dtype} {tuple(value.shape)}, "
                    f"record {first['index']}'s {like.dtype} {tuple(like.shape)}"
                )
        seen[index] = True  # with pair_records' count check: every index of 0..N-1 once
        pairs.labels[index] = record["label"]
        pairs.noise[index] = record["noise"]
        pairs.tokens[index] = _stored_tokens(record["tokens"])
    return pairs


def _held_dtype(stored: torch.dtype) -> torch.dtype:
    """float16 and float32 noise is held as stored; float64 as float32 (each batch is cast to
    float32 anyway)."""
    return torch.float32 if stored == torch.float64 else stored


def pair_identity(folder: str | Path) -> dict | None:
    """What a finished folder's pairs are (their teacher, settings and count, which fix every
    record), read from its manifest; ``None`` without one. ``dd train`` compares it on resume."""
    manifest_path = Path(folder) / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    return manifest_identity(json.loads(manifest_path.read_text()))


def manifest_identity(manifest: dict) -> dict:
    """``pair_identity`` of a manifest already read."""
    return {
        "teacher": manifest["teacher"]["fingerprint"],
        "settings_key": manifest["settings_key"],
        "num_pairs": manifest["counts"]["num_pairs"],
        # the records themselves: the same settings made elsewhere (another device, another
        # batch size for FAR) can give other pairs (docs/pairs.md)
        "shard_sha256": [shard["sha256"] for shard in manifest.get("shards", [])],
    }


def pair_sampling(
    folder: str | Path, *, continuous: bool = False
) -> SamplingConfig | ContinuousSamplingConfig:
    """The teacher's sampling settings a pair folder was made with (its manifest): a
    ``SamplingConfig``, or a ``ContinuousSamplingConfig`` for a continuous-token teacher."""
    manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    return manifest_sampling(manifest, continuous=continuous)


def manifest_sampling(
    manifest: dict, *, continuous: bool
) -> SamplingConfig | ContinuousSamplingConfig:
    """``pair_sampling`` of a manifest already read."""
    return sampling_from_dict(manifest["settings"]["sampling"], continuous=continuous)


def sampling_from_dict(
    data: dict, *, continuous: bool
) -> SamplingConfig | ContinuousSamplingConfig:
    """Stored sampling settings (a manifest's, a student card's) as the config of their kind;
    settings of the other kind are refused, naming the fields that do not belong."""
    kind = ContinuousSamplingConfig if continuous else SamplingConfig
    foreign = sorted(set(data) - {field.name for field in dataclasses.fields(kind)})
    if foreign:
        raise ValueError(
            f"sampling settings {foreign} are not those of a "
            f"{'continuous-token' if continuous else 'codebook'} teacher ({kind.__name__})"
        )
    return kind(**data)


def _stored_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Code indices ``[n]`` as long; a continuous-token teacher's float tokens ``[n, C]`` as
    float32 (#13), never cast to ids."""
    return tokens.float() if tokens.dtype.is_floating_point else tokens.long()


def split_heldout(
    pairs: PairSet, num_heldout: int, num_train: int | None = None
) -> tuple[PairSet, PairSet]:
    """(train, held-out): the last ``num_heldout`` pairs by global index are held out; the first
    ``num_train`` of the others train (default: all of them)."""
    used = split_sizes(len(pairs), num_heldout, num_train)[0]
    cut = len(pairs) - num_heldout
    # views, not copies: dd train keeps one copy of the pairs (the loaded set) per process
    return pairs.subset(slice(0, used)), pairs.subset(slice(cut, len(pairs)))


def split_sizes(num_pairs: int, num_heldout: int, num_train: int | None) -> tuple[int, int]:
    """(train pairs, held-out pairs) of ``split_heldout``, or its refusal: known from a
    manifest's count, before the pairs are loaded."""
    if not 0 <= num_heldout < num_pairs:
        raise ValueError(f"num_heldout must be in [0, {num_pairs}), got {num_heldout}")
    cut = num_pairs - num_heldout
    if num_train is not None and not 0 < num_train <= cut:
        raise ValueError(
            f"num_train must be in [1, {cut}] ({num_pairs} pairs, {num_heldout} held out), "
            f"got {num_train}"
        )
    return (cut if num_train is None else num_train), num_heldout


@functools.lru_cache(maxsize=2)  # the current epoch's (and a resumed rank's previous one)
def epoch_permutation(num_samples: int, seed: int) -> torch.Tensor:
    """One epoch's order, drawn once per epoch, not per step (at 1.2M pairs a draw takes 50 ms
    on one CPU thread)."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class BatchOrder:
    """Which pairs and timesteps make global batch ``step`` (see the module docstring)."""

    num_samples: int
    global_batch_size: int
    num_timesteps: int
    seed: int

    def __post_init__(self) -> None:
        if self.global_batch_size > self.num_samples:
            raise ValueError(
                f"global batch {self.global_batch_size} exceeds the {self.num_samples} pairs"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    def rows(self, step: int) -> torch.Tensor:
        epoch, within = divmod(step, self.steps_per_epoch)
        permutation = epoch_permutation(self.num_samples, self.seed * SEED_STRIDE + epoch)
        start = within * self.global_batch_size
        return permutation[start : start + self.global_batch_size].clone()

    def timestep_choices(self, step: int) -> torch.Tensor:
        """Index into the training timesteps of every sample of the batch (uniform, Eq. 7)."""
        generator = torch.Generator().manual_seed((self.seed + 1) * SEED_STRIDE + step)
        return torch.randint(self.num_timesteps, (self.global_batch_size,), generator=generator)


class PairBatches(IterableDataset):
    """This rank's slice of global batches ``start_step, start_step + 1, ...`` (whole batches:
    use ``DataLoader(batch_size=None)``). ``teacher_log_probs``: per-pair teacher-KL targets
    ``[N, n, V]`` (``dd.losses.cached_teacher_log_probs``), served under that key."""

    def __init__(
        self,
        pairs: PairSet,
        order: BatchOrder,
        *,
        start_step: int,
        rank: int,
        world_size: int,
        teacher_log_probs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if order.global_batch_size % world_size:
            raise ValueError(
                f"global batch {order.global_batch_size} is not divisible by {world_size} processes"
            )
        if teacher_log_probs is not None and teacher_log_probs.shape[0] != len(pairs):
            raise ValueError(
                f"{teacher_log_probs.shape[0]} cached teacher-KL targets for {len(pairs)} pairs"
            )
        self.pairs, self.order, self.teacher_log_probs = pairs, order, teacher_log_probs
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        per_rank = self.order.global_batch_size // self.world_size
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        step = self.start_step
        while True:
            rows = self.order.rows(step)[mine]
            batch = {
                "labels": self.pairs.labels[rows],
                "noise": self.pairs.noise[rows].float(),  # stored float16 -> float32: exact
                "tokens": self.pairs.tokens[rows],
                "timestep_choice": self.order.timestep_choices(step)[mine],
            }
            if self.teacher_log_probs is not None:
                batch["teacher_log_probs"] = self.teacher_log_probs[rows]
            yield batch
            step += 1
