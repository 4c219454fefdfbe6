"""The fused pass's q/k/v width: time per width, and bitwise batch invariance at every width.

`dd.flow.fused_posterior_mean` evaluates equation (3) as one attention call whose q/k/v width
is max(C + 1, `min_width`) (zero padding). For each shape (LlamaGen V=16384 C=8, VAR V=4096
C=32; random codebooks, peaked random log p, x ~ N(0, I), t = 0.5, float32) this script

- times one evaluation on `--tokens` tokens at each width (median of `--repeats`, widths
  interleaved repeat by repeat so that machine load hits all alike), and
- solves the same tokens again in batches of other sizes and counts the rows whose result
  differs in any bit from the all-together batch (round-off depends on how the kernel blocks
  rows, so bitwise equality across batch sizes is not expected at any width).

Results go to docs/flow_matching.md ("Fused width") and the comment on
`dd.flow.FUSED_MIN_WIDTH`.

    python3 benchmarks/flow_width.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine_description

from dd.flow import FUSED_MIN_WIDTH, fused_posterior_mean

# (name, V, C, widths): C + 1 first, then paddings.
SHAPES = (
    ("LlamaGen", 16384, 8, (9, 16, 24, 32, 64)),
    ("VAR", 4096, 32, (33, 40, 48, 64)),
)
OTHER_BATCH_SIZES = (1, 7, 100, 300)
EVAL_TIME = 0.5
LOG_P_SCALE = 4.0  # log p = log_softmax(4 * N(0, 1)): peaked, full support


def problem(vocab_size: int, code_dim: int, num_tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    codebook = torch.randn(vocab_size, code_dim, generator=generator)
    log_probs = torch.log_softmax(
        LOG_P_SCALE * torch.randn(num_tokens, vocab_size, generator=generator), -1
    )
    x = torch.randn(num_tokens, code_dim, generator=generator)
    return codebook, log_probs, x


def rows_differing_bitwise(codebook, log_probs, x, width: int, batch_size: int) -> int:
    whole = fused_posterior_mean(log_probs, codebook, min_width=width)(x, EVAL_TIME)
    parts = [
        fused_posterior_mean(log_probs[i : i + batch_size], codebook, min_width=width)(
            x[i : i + batch_size], EVAL_TIME
        )
        for i in range(0, x.shape[0], batch_size)
    ]
    return int((torch.cat(parts) != whole).any(dim=1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description(args.threads)}, float32, {args.tokens} tokens")
    print(f"default: width max(C + 1, {FUSED_MIN_WIDTH})")
    batches = " | ".join(f"rows differing, batches of {b}" for b in OTHER_BATCH_SIZES)
    print(f"| shape | width | ms per evaluation | vs C + 1 | {batches} |")
    print("|---|---|---|---|" + "---|" * len(OTHER_BATCH_SIZES))
    for name, vocab_size, code_dim, widths in SHAPES:
        codebook, log_probs, x = problem(vocab_size, code_dim, args.tokens)
        calls = {w: fused_posterior_mean(log_probs, codebook, min_width=w) for w in widths}
        for call in calls.values():  # warm-up
            call(x, EVAL_TIME)
        times = {w: [] for w in widths}
        for _ in range(args.repeats):
            for width, call in calls.items():
                start = time.perf_counter()
                call(x, EVAL_TIME)
                times[width].append(time.perf_counter() - start)
        base = statistics.median(times[widths[0]])
        for width in widths:
            ms = statistics.median(times[width])
            counts = " | ".join(
                f"{rows_differing_bitwise(codebook, log_probs, x, width, b)}/{args.tokens}"
                for b in OTHER_BATCH_SIZES
            )
            label = f"{name} V={vocab_size} C={code_dim}"
            print(f"| {label} | {width} | {1e3 * ms:.2f} | {base / ms:.2f}x | {counts} |")


if __name__ == "__main__":
    main()
