"""What LlamaGen's bf16 autocast on CUDA does to its log-probs and pairs, with CPU bf16 autocast
standing in for CUDA's (no GPU here: the kernels differ, the precision is the same).

    PYTHONPATH=. python3 benchmarks/llamagen_bf16_pairs.py --num-pairs 128

``LlamaGenSession`` autocasts to bf16 on CUDA, as the official sampler runs in bf16
(``teachers.llamagen.session.compute_autocast``); teacher forcing (``logits_teacher_forcing``)
and everything on the CPU run in float32. Printed, on llamagen-digits' pairs (CFG 2.0, the
default flow map): the session's log-probs against teacher forcing's in float32 and under
bf16, the pair tokens mapped under bf16 against float32's, and how many tokens
``dd verify-shards`` would flag when it re-maps bf16-made pairs in float32 (teacher-forced on
the stored tokens, as it does). The CPU's bf16 kernels decide the bf16 figures: the script
prints the CPU model, torch's kernel ISA level and the CPU's bf16 flags (``avx512_bf16``,
``amx_bf16``), and runs on different CPUs can differ.
"""

from __future__ import annotations

import argparse

import torch
from common import cpu_kernels, machine_description

import teachers.llamagen.session as llamagen_session
from data_gen.config import FlowSettings
from data_gen.pairs import draw_sample, map_noise
from dd.baselines import teacher_forcing_log_probs
from teachers.protocol import SamplingConfig
from teachers.tiny import load_tiny_teacher


def session_log_probs(teacher, labels, tokens, sampling) -> torch.Tensor:
    """The session's guided log-probs ``[B, n, V]`` with ``tokens`` accepted step by step."""
    steps = []
    with teacher.start(labels, sampling) as session:
        for k in range(teacher.geometry.num_steps):
            steps.append(session.next_log_probs())
            session.accept(tokens[:, k : k + 1])
    return torch.cat(steps, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-pairs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_tiny_teacher("llamagen-digits")
    sampling, flow = SamplingConfig(cfg_scale=2.0), FlowSettings()
    n, code_dim = teacher.geometry.num_tokens, teacher.code_dim
    drawn = [
        draw_sample(0, i, num_tokens=n, code_dim=code_dim, num_classes=teacher.num_classes,
                    labels="balanced")
        for i in range(args.num_pairs)
    ]  # fmt: skip
    labels = torch.tensor([label for label, _ in drawn])
    noise = torch.stack([value for _, value in drawn])

    float_tokens = map_noise(teacher, labels, noise, sampling, flow)
    forced = teacher_forcing_log_probs(teacher, labels, float_tokens, sampling)
    float_session = session_log_probs(teacher, labels, float_tokens, sampling)
    cuda_rule = llamagen_session.compute_autocast
    llamagen_session.compute_autocast = lambda device: torch.autocast("cpu", torch.bfloat16)
    try:
        bf16_session = session_log_probs(teacher, labels, float_tokens, sampling)
        bf16_tokens = map_noise(teacher, labels, noise, sampling, flow)
    finally:
        llamagen_session.compute_autocast = cuda_rule
    remapped = map_noise(teacher, labels, noise, sampling, flow, forced_tokens=bf16_tokens)

    finite = torch.isfinite(forced)
    print(machine_description(args.threads))
    print(cpu_kernels())
    print(f"llamagen-digits, {args.num_pairs} pairs of {n} tokens, CFG 2.0")
    for name, log_probs in (("float32", float_session), ("bf16", bf16_session)):
        gap = (log_probs - forced)[finite].abs()
        print(f"session ({name}) vs teacher forcing (float32) log-probs: max {gap.max():.3g}, "
              f"mean {gap.mean():.3g}")  # fmt: skip
    for name, tokens in (("bf16 pairs", bf16_tokens), ("float32 re-map of bf16 pairs", remapped)):
        differ = tokens != (float_tokens if name == "bf16 pairs" else bf16_tokens)
        print(f"{name}: {int(differ.sum())} of {differ.numel()} tokens differ from "
              f"{'float32 pairs' if name == 'bf16 pairs' else 'the stored ones'}, in "
              f"{int(differ.any(1).sum())} of {args.num_pairs} pairs")  # fmt: skip


if __name__ == "__main__":
    main()
