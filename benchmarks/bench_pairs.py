"""Pair generation speed against the teacher's plain sampler, and bytes per stored pair.

For each teacher, three ways to make the same batches (same labels; the engine's own noise,
which the map core reuses), alternated batch by batch so that load from other processes hits
all three alike:
- engine: ``dd generate``'s ``run_generation`` (1 process, Lightning predict loop, shard
  writing, checksums): the seconds of each batch, from the end of the previous batch's hooks
  (or the loop's start) to the end of this batch's write, data loading included;
- plain sampler: ``teachers.sampling.sample_tokens`` (multinomial draw per step) on that
  batch's labels;
- map core: ``data_gen.pairs.map_noise`` (the same session, AR flow matching per step) on that
  batch's labels and noise.
The sampler and the map core run inside a callback of the engine's loop, right after each
batch is written, and their time is kept out of the engine's (all three under the predict
loop's inference mode). Reported: the median seconds per batch of each, and each one's images/s
over the plain sampler's taken batch by batch (median and quartiles over the batches; the
first batch, a warm-up, is left out when there are more than two). Trainer start-up, the
receipt and the manifest fall outside the batches and are reported separately.
Bytes per pair: one real record of the VAR-d16 and LlamaGen-L shapes written through the
shard writer (marginal cost of a record in a shard, tar headers included), and the same with a
float tar mtime (webdataset's default) instead of the writer's fixed integer 0.
Results go to docs/benchmarks.md ("Pair generation").

    python3 benchmarks/bench_pairs.py --teacher llamagen-digits --batch-size 64 --num-batches 12
    python3 benchmarks/bench_pairs.py --teacher llamagen-B --batch-size 4 --num-batches 1
    python3 benchmarks/bench_pairs.py --bytes-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from common import machine_description
from lightning.pytorch.callbacks import Callback

import data_gen.shards
from data_gen.config import (
    FlowSettings,
    GenerateRecipe,
    OutputSettings,
    PairSettings,
    RunSettings,
    SamplingOverrides,
)
from data_gen.engine import run_generation
from data_gen.pairs import draw_sample, map_noise, token_dtype
from data_gen.shards import OpenShard, RunIdentity, ShardRange, encode_record
from dd.evaluate import RatioSpread
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.sampling import sample_tokens

# (name, tokens, code_dim, vocab) of the release teachers (docs/teachers.md).
RECORD_SHAPES = (("VAR-d16", 680, 32, 4096), ("LlamaGen-L", 256, 8, 16384))


def random_llamagen_b(folder: Path) -> TeacherSpec:
    """LlamaGen-B GPT (random weights) + a VQ with the VQ-16 codebook shape (16384 x 8) but
    narrow conv widths (only the codebook matters for pairs), saved and loaded via the registry."""
    from safetensors.torch import save_file

    from teachers.llamagen import GPT, GPTConfig, VQConfig, VQModel

    torch.manual_seed(0)
    gpt_config = GPTConfig.preset("B", 16)
    vq_args = dict(ch=32, z_channels=32, codebook_show_usage=False)
    gpt, vq = GPT(gpt_config), VQModel(VQConfig.preset("VQ-16", **vq_args))
    gpt_path, vq_path = folder / "gpt_b_random.safetensors", folder / "vq16_narrow.safetensors"
    save_file({k: v.contiguous() for k, v in gpt.state_dict().items()}, str(gpt_path))
    save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, str(vq_path))
    return TeacherSpec(
        family="llamagen",
        checkpoint=str(gpt_path),
        tokenizer_checkpoint=str(vq_path),
        official_args={
            "model": {"dim": 768, "n_layer": 12, "n_head": 12, "block_size": 256},
            "tokenizer": {"ch_mult": [1, 1, 2, 2, 4], **vq_args},
        },
    )


class Interleaved(Callback):
    """Times each batch of the engine's predict loop and, right after it is written, the plain
    sampler and the map core on the same batch (their seconds kept out of the engine's)."""

    def __init__(self, teacher, sampling, flow: FlowSettings):
        self.teacher, self.sampling, self.flow = teacher, sampling, flow
        self.generator = torch.Generator().manual_seed(0)
        self.seconds: dict[str, list[float]] = {"engine": [], "sampler": [], "map": []}
        self.mark = 0.0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.mark = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        # Called after the ShardWriter's hook (it comes first in the callback list): the
        # batch's records are in the shard by now.
        self.seconds["engine"].append(time.perf_counter() - self.mark)
        start = time.perf_counter()
        sample_tokens(self.teacher, batch["label"], self.sampling, generator=self.generator)
        self.seconds["sampler"].append(time.perf_counter() - start)
        start = time.perf_counter()
        map_noise(self.teacher, batch["label"], batch["noise"], self.sampling, self.flow)
        self.seconds["map"].append(time.perf_counter() - start)
        self.mark = time.perf_counter()

    @property
    def interleaved_seconds(self) -> float:
        return sum(self.seconds["sampler"]) + sum(self.seconds["map"])


def bench_speed(spec: TeacherSpec, label: str, batch_size: int, num_batches: int) -> None:
    teacher = load_teacher(spec)
    if spec.tiny is not None:  # the settings recommended for a shipped tiny teacher
        from teachers.tiny.registry import tiny_sampling

        sampling = tiny_sampling(spec.tiny)
    else:
        sampling = teacher.default_sampling()
    flow = FlowSettings()
    vocab, code_dim = teacher.codebook.shape
    n = teacher.geometry.num_tokens
    timer = Interleaved(teacher, sampling, flow)
    with tempfile.TemporaryDirectory() as folder:
        recipe = GenerateRecipe(
            teacher=spec,
            sampling=SamplingOverrides(**dataclasses.asdict(sampling)),
            flow=flow,
            pairs=PairSettings(num_pairs=batch_size * num_batches, seed=0),
            output=OutputSettings(folder=folder, shard_size=batch_size * num_batches),
            run=RunSettings(batch_size=batch_size, accelerator="cpu", progress_bar=False),
        )
        wall = time.perf_counter()
        run_generation(recipe, teacher=teacher, callbacks=[timer])
        wall = time.perf_counter() - wall - timer.interleaved_seconds

    skip = 1 if num_batches > 2 else 0  # the first batch warms up
    seconds = {name: values[skip:] for name, values in timer.seconds.items()}
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"\n{label}: {n} tokens, V={int(vocab)}, C={int(code_dim)}, sampling {sampling}, "
        f"flow {flow}; batch {batch_size} x {num_batches} batches, alternated batch by batch; "
        f"medians over {len(seconds['engine'])} batches" + (" (the first left out)" if skip else "")
    )
    print(
        "| measurement | s / batch | images/s | images/s over the plain sampler's: "
        "median (quartiles) batch by batch |"
    )
    print("|---|---|---|---|")
    for name, key in (
        ("plain sampler (`sample_tokens`)", "sampler"),
        ("map core (`map_noise`)", "map"),
        ("engine (`run_generation`, 1 process, shards written)", "engine"),
    ):
        # images/s ratio = sampler seconds / these seconds, in the same batch
        spread = RatioSpread.of_rounds(seconds["sampler"], seconds[key])
        print(
            f"| {name} | {median[key]:.3f} | {batch_size / median[key]:.2f} | "
            f"{spread.median:.2f}x ({spread.low:.2f}-{spread.high:.2f}) |"
        )
    print(
        f"engine wall time incl. Trainer start-up, receipt and manifest (the interleaved "
        f"sampler and map core taken out): {wall:.1f} s for {batch_size * num_batches} pairs"
    )


def record_bytes(n: int, code_dim: int, vocab: int, noise_dtype: torch.dtype) -> int:
    """Bytes of one record inside a shard: from the first member of record 0 to that of record 1
    (tar headers and padding included; the shard's end-of-archive padding excluded)."""
    with tempfile.TemporaryDirectory() as folder:
        identity = RunIdentity("0" * 16, "bench", {})
        shard = OpenShard(Path(folder), ShardRange(0, 0, 2), identity)
        for index in range(2):
            _, noise = draw_sample(
                0, index, num_tokens=n, code_dim=code_dim, num_classes=1000, noise_dtype=noise_dtype
            )
            tokens = torch.randint(vocab, (n,)).to(token_dtype(vocab))
            shard.write(encode_record(index, 7, noise, tokens, "0" * 16))
        shard.close()
        with tarfile.open(Path(folder) / shard.shard.name) as tar:
            members = tar.getmembers()
    return members[len(members) // 2].offset - members[0].offset


def bench_bytes() -> None:
    """Bytes per record of each release shape, and what a float tar mtime (webdataset's
    ``TarWriter`` default, ``time.time()``) would add: tarfile then writes a PAX header."""
    print("\n| shape | noise dtype | bytes per pair (in a shard) | payload (noise + tokens) |")
    print("|---|---|---|---|")
    for name, n, code_dim, vocab in RECORD_SHAPES:
        for noise_dtype in (torch.float32, torch.float16):
            per_pair = record_bytes(n, code_dim, vocab, noise_dtype)
            payload = n * code_dim * noise_dtype.itemsize + n * token_dtype(vocab).itemsize
            print(
                f"| {name} ({n} tokens, C={code_dim}, V={vocab}) | "
                f"{str(noise_dtype).removeprefix('torch.')} | {per_pair:,} | {payload:,} |"
            )
    print("\n| shape, float32 noise | bytes per pair, mtime 0 | float mtime | added per record |")
    print("|---|---|---|---|")
    for name, n, code_dim, vocab in RECORD_SHAPES:
        fixed = record_bytes(n, code_dim, vocab, torch.float32)
        with mock.patch.object(data_gen.shards, "TAR_MTIME", time.time()):
            floating = record_bytes(n, code_dim, vocab, torch.float32)
        print(f"| {name} | {fixed:,} | {floating:,} | {floating - fixed:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher", default="llamagen-digits", help="llamagen-B | a tiny teacher's name"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--bytes-only", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description(args.threads)}, float32, CPU")
    if not args.bytes_only:
        with tempfile.TemporaryDirectory() as folder:
            if args.teacher == "llamagen-B":
                spec, label = random_llamagen_b(Path(folder)), "LlamaGen-B shape, random weights"
            else:
                spec, label = TeacherSpec(tiny=args.teacher), f"tiny teacher {args.teacher}"
            bench_speed(spec, label, args.batch_size, args.num_batches)
    bench_bytes()
    print(json.dumps({"argv": sys.argv[1:]}))


if __name__ == "__main__":
    main()
