"""``dd verify-shards``: is a pair folder complete, intact, and what the teacher's map gives?

1. the manifest is complete and every shard's size and sha256 match it (a bad shard is named;
   while the run is in progress, the finished shards are checked against their receipts);
2. a sample of records is read back: index, label and noise must equal what (seed, index)
   draw (``data_gen.pairs.draw_sample``), and the teacher fingerprint must be the manifest's;
3. those records are re-mapped with the teacher: the stored tokens are teacher-forced into the
   session, each step's guided log-probs and the stored noise go through
   ``flow_match_tokens``, and the mapped tokens must equal the stored ones. For a
   continuous-token teacher (FAR) the head's map of the stored noise under the stored prefix
   must equal every stored token to ``CONTINUOUS_TOKEN_ATOL``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_gen.config import FlowSettings, PairSettings
from data_gen.pairs import (
    NOISE_DTYPES,
    draw_sample,
    is_continuous,
    map_noise,
    map_noise_continuous,
)
from data_gen.shards import (
    MANIFEST_NAME,
    REWRITE_MANIFEST,
    ShardError,
    read_json,
    read_shard,
    shards_from_manifest,
    verify_shard_file,
)
from dd.config import recipe_from_dict
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.protocol import ContinuousSamplingConfig, SamplingConfig, Teacher

# A continuous token re-mapped teacher-forced (one full pass) vs as stored (KV-cached steps):
# equal up to float32 summation order (tests/test_far.py measures ~1e-7).
CONTINUOUS_TOKEN_ATOL = 1e-4


@dataclass
class VerifyReport:
    folder: Path
    num_shards: int = 0
    shards_checked: int = 0
    records_checked: int = 0
    tokens_checked: int = 0
    token_mismatches: int = 0
    records_with_mismatch: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what may explain a failure; not failures

    @property
    def ok(self) -> bool:
        return not self.problems and not self.token_mismatches

    def summary(self) -> str:
        lines = [
            f"{self.folder}: {self.shards_checked}/{self.num_shards} shards match their sha256; "
            f"{self.records_checked} records re-mapped with the teacher, "
            f"{self.token_mismatches} of {self.tokens_checked} tokens differ",
            *[f"  problem: {p}" for p in self.problems],
        ]
        if self.records_with_mismatch:
            lines.append(f"  records whose tokens differ: {self.records_with_mismatch[:20]}")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


# What verify_folder reads of a manifest (``dd generate`` writes them all from the start).
MANIFEST_KEYS = (
    ("counts", "num_pairs"),
    ("counts", "shard_size"),
    ("settings",),
    ("teacher", "fingerprint"),
    ("teacher", "spec"),
)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.exists():
        raise ShardError(f"{folder} has no {MANIFEST_NAME}: not a pair folder")
    manifest = read_json(path)
    missing = [".".join(keys) for keys in MANIFEST_KEYS if not _has(manifest, keys)]
    if missing:  # a hand-edited or damaged manifest: a KeyError traceback otherwise
        raise ShardError(f"{path} lacks {', '.join(missing)}: {REWRITE_MANIFEST}")
    return manifest


def _has(data: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def shard_entries(folder: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> its bytes and sha256: a complete manifest's entries; while the run is in
    progress (its manifest lists no shard) the receipts of the shards published so far."""
    if manifest.get("status") == "complete":
        return {entry["file"]: entry for entry in manifest.get("shards", [])}
    return {
        shard.name: read_json(folder / shard.receipt_name)
        for shard in shards_from_manifest(manifest)
        if (folder / shard.name).exists() and (folder / shard.receipt_name).exists()
    }


def verify_folder(
    folder: str | Path,
    *,
    teacher: Teacher | None = None,
    teacher_spec: TeacherSpec | None = None,
    num_records: int = 64,
    sample_seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
) -> VerifyReport:
    """Check a pair folder (see the module docstring); problems are collected, not raised."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    shards = shards_from_manifest(manifest)
    report = VerifyReport(folder, num_shards=len(shards))
    entries = shard_entries(folder, manifest)
    if manifest.get("status") != "complete":
        report.problems.append(
            f"manifest status is {manifest.get('status')!r}: the run has not finished "
            "(rerun the same `dd generate` command to resume)"
        )
    good_shards = []
    for shard in shards:
        entry = entries.get(shard.name)
        if entry is None:
            if manifest.get("status") == "complete":
                report.problems.append(f"{shard.name}: missing from the manifest")
            elif (folder / shard.name).exists():
                report.problems.append(f"{folder / shard.name}: no receipt ({shard.receipt_name})")
            continue
        if not (folder / shard.name).exists():
            report.problems.append(f"{folder / shard.name}: file missing")
            continue
        try:
            verify_shard_file(folder, shard, entry)
        except ShardError as error:
            report.problems.append(str(error))
            continue
        good_shards.append(shard)
    report.shards_checked = len(good_shards)
    if not good_shards or num_records <= 0:
        return report

    # A deterministic sample of records from the intact shards.
    candidates = torch.tensor([i for s in good_shards for i in range(s.start, s.stop)])
    generator = torch.Generator().manual_seed(sample_seed)
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:num_records]]
    wanted = set(chosen.tolist())
    records = []
    for shard in good_shards:
        if not any(shard.start <= i < shard.stop for i in wanted):
            continue
        for record in read_shard(folder / shard.name):
            if record["index"] in wanted:
                records.append(record)
    found = {r["index"] for r in records}
    if found != wanted:
        report.problems.append(f"records not found in their shards: {sorted(wanted - found)[:20]}")

    settings = manifest["settings"]
    pairs = recipe_from_dict(PairSettings, settings["pairs"])
    fingerprint = manifest["teacher"]["fingerprint"]
    for record in records:
        label, noise = draw_sample(
            pairs.seed,
            record["index"],
            num_tokens=settings["num_tokens"],
            code_dim=settings["code_dim"],
            num_classes=settings["num_classes"],
            labels=pairs.labels,
            noise_dtype=NOISE_DTYPES[pairs.noise_dtype],
        )
        if record["teacher"] != fingerprint:
            report.problems.append(
                f"record {record['index']}: teacher {record['teacher']}, manifest {fingerprint}"
            )
        if record["label"] != label or not torch.equal(record["noise"], noise):
            report.problems.append(
                f"record {record['index']}: label/noise differ from what (seed {pairs.seed}, "
                "index) draws"
            )

    if teacher is None:
        spec = teacher_spec or recipe_from_dict(TeacherSpec, manifest["teacher"]["spec"])
        teacher = load_teacher(spec, device=device)
    if teacher.fingerprint() != fingerprint:
        report.problems.append(
            f"the teacher given has fingerprint {teacher.fingerprint()}, the shards were made "
            f"by {fingerprint}: cannot re-map"
        )
        return report
    continuous = is_continuous(teacher)
    if continuous:  # the head's map, re-run teacher-forced; equal to CONTINUOUS_TOKEN_ATOL
        sampling = ContinuousSamplingConfig(**settings["sampling"])
    else:
        sampling = SamplingConfig(**settings["sampling"])
        flow = recipe_from_dict(FlowSettings, settings["flow"])
    for begin in range(0, len(records), batch_size):
        batch = records[begin : begin + batch_size]
        labels = torch.tensor([r["label"] for r in batch])
        noise = torch.stack([r["noise"] for r in batch])
        if continuous:
            stored = torch.stack([r["tokens"] for r in batch]).float()
            mapped = map_noise_continuous(
                teacher, labels, noise, sampling, forced_tokens=stored
            ).cpu()
            differ = (mapped - stored).abs().amax(dim=-1) > CONTINUOUS_TOKEN_ATOL  # per token
            report.tokens_checked += differ.numel()
            report.token_mismatches += int(differ.sum())
            report.records_with_mismatch += [
                r["index"] for r, d in zip(batch, differ, strict=True) if d.any()
            ]
            continue
        stored = torch.stack([r["tokens"] for r in batch]).long()
        mapped = map_noise(teacher, labels, noise, sampling, flow, forced_tokens=stored).cpu()
        differ = mapped != stored
        report.tokens_checked += stored.numel()
        report.token_mismatches += int(differ.sum())
        report.records_with_mismatch += [
            r["index"] for r, d in zip(batch, differ, strict=True) if d.any()
        ]
    report.records_checked = len(records)
    if report.token_mismatches:
        run = manifest.get("recipe", {}).get("run", {})
        made_on = {entry["device"] for entry in manifest.get("shards", []) if "device" in entry}
        if not made_on:  # folders made before the device was recorded: the recipe's setting
            made_on = {ACCELERATOR_DEVICE_TYPES.get(str(run.get("accelerator")))} - {None}
        report.notes += device_notes(made_on, run.get("batch_size"), device)
    return report


# A generate recipe's run.accelerator -> the torch device type it computes on.
ACCELERATOR_DEVICE_TYPES = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}


def device_notes(made_on: set[str], batch_size: int | None, device: str) -> list[str]:
    """Why re-mapped tokens may differ when the pairs were made on another kind of device
    (``made_on``: the device types the shards record): kernels and precision differ (LlamaGen
    samples under bf16 autocast on CUDA: its log-probs move by 0.05 on average from float32's
    in the CPU stand-in of ``benchmarks/llamagen_bf16_pairs.py``), and a token whose noise lies
    near a decision boundary of the map may flip."""
    here = torch.device(device).type
    others = sorted(made_on - {here})
    if not others:
        return []
    where = " and ".join(others)
    return [
        f"these pairs were made on {where} and are re-mapped on {here}: kernels and precision "
        "differ between devices (LlamaGen samples under bf16 autocast on CUDA), so tokens "
        "whose noise lies near a decision boundary of the map can differ. Re-map on "
        f"{others[0]} (--device {others[0]}, --batch-size {batch_size}, the run's) to check "
        "the pairs themselves (docs/pairs.md)"
    ]


def as_dict(report: VerifyReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    out["folder"] = str(report.folder)
    out["ok"] = report.ok
    return out
