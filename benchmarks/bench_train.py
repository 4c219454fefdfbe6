"""Where a distillation training step's time goes, on a tiny teacher (CPU).

    python benchmarks/bench_train.py --teacher llamagen-digits --batch-size 64 --threads 2

Times, per step, averaged over ``--steps`` after ``--warmup``: the student forward and
backward through the CE term alone, the decode + perceptual path (forward and backward through
the frozen decoder and the digits features), the optimiser step, an EMA update of the student
backbone (what ``EMAWeightAveraging`` does each step, here on the backbone alone) and the data
(building one batch from ``dd.data.BatchOrder`` over random pairs of the right shape).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from dd.data import BatchOrder, PairBatches, PairSet
from dd.losses import dd_loss
from dd.metrics.digits import feature_distance
from dd.student import DDStudent
from dd.trajectory import apply_prefix, predicted_token_cross_entropy, trajectory_input
from teachers.tiny import load_tiny_teacher


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="llamagen-digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_tiny_teacher(args.teacher)
    second = teacher.geometry.num_steps // 3
    student = DDStudent(teacher, (0, second), teacher.geometry.step_ranges[second][0])
    n, (vocab, width), batch = teacher.geometry.num_tokens, teacher.codebook.shape, args.batch_size
    num_pairs = 20 * batch
    pairs = PairSet(
        torch.arange(num_pairs),
        torch.randint(teacher.num_classes, (num_pairs,)),
        torch.randn(num_pairs, n, width),
        torch.randint(vocab, (num_pairs, n)),
    )
    order = BatchOrder(num_pairs, batch, 2, seed=0)
    stream = iter(PairBatches(pairs, order, start_step=0, rank=0, world_size=1))
    data = next(stream)
    boundary = torch.tensor([0, teacher.geometry.step_ranges[second][0]])[data["timestep_choice"]]
    inputs = trajectory_input(data["noise"], data["tokens"], teacher.codebook, boundary)
    optimizer = torch.optim.AdamW(student.backbone.parameters(), lr=1e-4)
    average = copy.deepcopy(student.backbone)

    def forward_backward_ce():
        logits, _ = student(data["labels"], inputs, boundary, data["tokens"])
        predicted_token_cross_entropy(logits, data["tokens"], boundary).backward()

    embeddings = torch.randn(batch, n, width, requires_grad=True)

    def decode_perceptual():
        codes = teacher.codebook[data["tokens"]]
        _, emb = apply_prefix(
            torch.zeros(batch, n, vocab), embeddings, codes, data["tokens"], boundary
        )
        images = teacher.decode_embeddings(emb)
        with torch.no_grad():
            target = teacher.decode_tokens(data["tokens"])
        feature_distance(images, target).mean().backward()

    def full_step():
        logits, emb = student(data["labels"], inputs, boundary, data["tokens"])
        dd_loss(teacher, logits, emb, data["tokens"], boundary, feature_distance).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def ema():
        with torch.no_grad():
            for avg, cur in zip(average.parameters(), student.backbone.parameters(), strict=True):
                avg.lerp_(cur, 1e-3)

    def next_batch():
        next(stream)

    forward_backward_ce()  # gradients exist for the optimiser timing
    parts = {
        "student forward + backward (CE only)": timed(forward_backward_ce, args.steps, args.warmup),
        "decode + perceptual, forward + backward": timed(
            decode_perceptual, args.steps, args.warmup
        ),
        "optimizer step (AdamW)": timed(optimizer.step, args.steps, args.warmup),
        "EMA update (backbone)": timed(ema, args.steps, args.warmup),
        "data (one batch)": timed(next_batch, args.steps, args.warmup),
    }
    whole = timed(full_step, args.steps, args.warmup)
    params = sum(p.numel() for p in student.backbone.parameters())
    print(
        f"{args.teacher}: batch {batch}, {n} tokens, student {params / 1e6:.2f}M params, "
        f"{args.threads} threads"
    )
    print("| part | ms per step | share of the full step |")
    print("|---|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {1000 * seconds:.1f} | {100 * seconds / whole:.0f}% |")
    print(f"| full step (forward, both losses, backward, AdamW) | {1000 * whole:.1f} | 100% |")
    print(f"pairs per second (full step): {batch / whole:.0f}")


if __name__ == "__main__":
    main()
