"""Where a distillation training step's time goes, on a tiny teacher (CPU).

    python benchmarks/bench_train.py --teacher llamagen-digits --batch-size 64 --threads 2

Times per step: the student forward and backward through the CE term alone, the decode +
perceptual path (forward and backward through the frozen decoder and the digits features), the
optimiser step, an EMA update of the student backbone (one ``lerp_`` per backbone parameter: an
approximation of the step ``dd train``'s ``dd.ema.FrozenSharingEMA`` makes, which goes through
Lightning's ``AveragedModel`` over every trainable parameter, not timed here) and the data
(building one batch from ``dd.data.BatchOrder`` over random pairs of the right shape). Apart,
not in the full step: the teacher-KL term's targets (``loss.teacher_kl_weight``: one parallel
teacher-forcing forward, two with CFG, no grad), the cost that term adds, beside the same
targets formed one AR step at a time through the KV-cached session. All of these and the full
step are timed in turn, one call each per round (``dd.evaluate.alternated_seconds``),
``--steps`` rounds after ``--warmup`` warm-up rounds: medians over the rounds, and each share or
ratio taken within a round (median and quartiles), so load on a shared machine falls on all of
them alike.

Then the framework: ``dd train``'s own Trainer (``dd.train_command.make_trainer``: EMA callback,
step checkpoints, clipping, logging, the data module) against a plain loop doing the same
compute (``DistillModule.training_step``, backward, clipping, AdamW) on a batch held in memory,
alternated plain / Lightning / plain so drift shows; the difference is data loading plus
framework overhead.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from dd.data import BatchOrder, PairBatches, PairSet
from dd.evaluate import RatioSpread, alternated_seconds
from dd.losses import dd_loss, teacher_log_probs
from dd.metrics.digits import feature_distance
from dd.student import DDStudent
from dd.trajectory import apply_prefix, predicted_token_cross_entropy, trajectory_input
from teachers.tiny import load_tiny_teacher, tiny_sampling


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


class StepClock(Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.ended = warmup, None, None

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.ended = time.perf_counter()


def framework_overhead(
    teacher, pairs, batch: int, steps: int, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per step: dd train's Trainer against a plain loop of the same compute."""
    import lightning.pytorch as pl

    from dd.data import split_heldout
    from dd.distill import DistillModule, OptimSettings, PairDataModule
    from dd.losses import LossSettings
    from dd.train_command import make_trainer
    from dd.train_recipe import RunSection

    second = teacher.geometry.num_steps // 3

    def fresh_module() -> DistillModule:
        torch.manual_seed(0)
        student = DDStudent(teacher, (0, second), teacher.geometry.num_tokens, 2.5)
        optim = OptimSettings(lr=1e-3, lr_reference_batch=0)
        return DistillModule(
            student, feature_distance, optim, LossSettings("digits", ce_weight=1.0), batch
        )

    train, heldout = split_heldout(pairs, batch)
    data = PairDataModule(train, heldout, global_batch_size=batch, num_timesteps=2, seed=0)

    def plain() -> float:
        module = fresh_module()
        optimizer = module.configure_optimizers()
        order = BatchOrder(len(train), batch, 2, seed=0)
        held = next(iter(PairBatches(train, order, start_step=0, rank=0, world_size=1)))

        def step():
            loss = module.training_step(held, 0)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.student.trainable_parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        module.log_dict = lambda *args, **kwargs: None  # no Trainer to log to
        return timed(step, steps, warmup)

    def lightning() -> float:
        with tempfile.TemporaryDirectory() as folder:
            run = RunSection(
                output=folder, global_batch_size=batch, max_steps=warmup + steps,
                ema_decay=0.998, accelerator="cpu", val_every_steps=10**6,
                checkpoint_every_steps=100, progress_bar=False,
            )  # fmt: skip
            trainer = make_trainer(run, Path(folder))
            clock = StepClock(warmup)
            trainer.callbacks.append(clock)
            pl.seed_everything(0, verbose=False)
            trainer.fit(fresh_module(), datamodule=data)
            return (clock.ended - clock.started) / steps

    plains, lightnings = [plain()], []
    for _ in range(repeats):  # plain, Lightning, plain, ...: drift shows in the spreads
        lightnings.append(lightning())
        plains.append(plain())
    return {"plain": plains, "lightning": lightnings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="llamagen-digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--lightning-steps", type=int, default=30, help="0: skip the Trainer comparison"
    )
    parser.add_argument("--lightning-repeats", type=int, default=3)
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

    def teacher_kl_targets():
        teacher_log_probs(teacher, data["labels"], data["tokens"], tiny_sampling(args.teacher))

    def teacher_kl_targets_stepped():  # the same targets one AR step at a time (the old form)
        with teacher.start(data["labels"], tiny_sampling(args.teacher)) as session:
            for start, end in teacher.geometry.step_ranges:
                session.next_log_probs()
                session.accept(data["tokens"][:, start:end])

    def teacher_kl_targets_stepped_no_grad():
        with torch.no_grad():
            teacher_kl_targets_stepped()

    forward_backward_ce()  # gradients exist for the optimiser timing
    parts = {
        "student forward + backward (CE only)": forward_backward_ce,
        "decode + perceptual, forward + backward": decode_perceptual,
        "optimizer step (AdamW)": optimizer.step,
        "EMA update (backbone)": ema,
        "data (one batch)": next_batch,
    }
    calls = {
        **parts,
        "kl targets": teacher_kl_targets,
        "kl stepped": teacher_kl_targets_stepped_no_grad,
        "full step": full_step,
    }
    for _ in range(max(args.warmup - 1, 0)):  # alternated_seconds adds one warm-up round
        for call in calls.values():
            call()
    seconds = alternated_seconds(calls, args.steps)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    whole = median["full step"]
    params = sum(p.numel() for p in student.backbone.parameters())
    print(
        f"{args.teacher}: batch {batch}, {n} tokens, student {params / 1e6:.2f}M params, "
        f"{args.threads} threads; every part, the teacher-KL targets and the full step "
        f"alternated, {args.steps} rounds after {max(args.warmup, 1)} warm-up rounds; "
        "ms: medians over the rounds; ratios: within each round, median (quartiles)"
    )
    print("| part | ms per step | share of the full step (round by round) |")
    print("|---|---|---|")
    for name in parts:
        share = RatioSpread.of_rounds(seconds[name], seconds["full step"])
        print(
            f"| {name} | {1000 * median[name]:.1f} | {100 * share.median:.0f}% "
            f"({100 * share.low:.0f}-{100 * share.high:.0f}%) |"
        )
    print(f"| full step (forward, both losses, backward, AdamW) | {1000 * whole:.1f} | 100% |")
    print(f"pairs per second (full step): {batch / whole:.0f}")
    kl = RatioSpread.of_rounds(seconds["kl targets"], seconds["full step"])
    stepped = RatioSpread.of_rounds(seconds["kl stepped"], seconds["full step"])
    with_term = [
        (full + parallel) / (full + one_by_one)
        for full, parallel, one_by_one in zip(
            seconds["full step"], seconds["kl targets"], seconds["kl stepped"], strict=True
        )
    ]
    now = RatioSpread.of_rounds(with_term, [1.0] * len(with_term))
    print(
        "apart: teacher-KL targets (parallel teacher forcing, no grad) "
        f"{1000 * median['kl targets']:.1f} ms, +{100 * kl.median:.0f}% of the full step "
        f"({100 * kl.low:.0f}-{100 * kl.high:.0f}%); stepping the KV-cached session instead: "
        f"{1000 * median['kl stepped']:.1f} ms, +{100 * stepped.median:.0f}% "
        f"({100 * stepped.low:.0f}-{100 * stepped.high:.0f}%); a step with the parallel targets "
        f"over one with the stepped ones: {now.median:.2f}x ({now.low:.2f}-{now.high:.2f})"
    )
    if args.lightning_steps:
        times = framework_overhead(
            teacher, pairs, batch, args.lightning_steps, args.warmup, args.lightning_repeats
        )
        plain, trainer = (sum(v) / len(v) for v in (times["plain"], times["lightning"]))
        spread = {k: 1000 * (max(v) - min(v)) for k, v in times.items()}
        print(f"\nalternated plain / Trainer, {args.lightning_steps} steps each, mean (spread)")
        print("| loop (prior on, CE 1.0 + digits distance) | ms per step | share |")
        print("|---|---|---|")
        print(
            f"| plain loop, batch in memory ({len(times['plain'])} runs) | "
            f"{1000 * plain:.1f} ({spread['plain']:.1f}) | {100 * plain / trainer:.0f}% |"
        )
        print(
            f"| dd train's Trainer: data, EMA, logging, checkpoints every 100 "
            f"({len(times['lightning'])} runs) | {1000 * trainer:.1f} "
            f"({spread['lightning']:.1f}) | 100% |"
        )
        print(
            f"| data loading + framework overhead | {1000 * (trainer - plain):.1f} | "
            f"{100 * (trainer - plain) / trainer:.1f}% |"
        )
        print(f"pairs per second (dd train): {batch / trainer:.0f}")


if __name__ == "__main__":
    main()
