"""Cost per token of the AR flow-matching map vs a LlamaGen-L-shaped teacher forward.

Side by side in one run: `flow_match_tokens` at its defaults on LlamaGen (V=16384, C=8) and
VAR (V=4096, C=32) shapes, and one forward of a minimal LlamaGen-L-shaped layer stack (24
layers, dim 1024, 16 heads, SwiGLU hidden 2816, causal attention; random weights: speed does
not depend on the values) over the same number of tokens. A full forward of L tokens costs
per token about the FLOPs of one KV-cached decoding step (the weight multiplies are the same;
the attention over the prefix is the same total), so forward time / tokens is the teacher's
per-token compute for one forward. With classifier-free guidance on (the default of both
teachers' sampling) the teacher forwards a conditional and an unconditional row per generated
token: that forward (twice the batch) is timed too, and so are NFE + 1 evaluations of the
fused posterior-mean pass the map is made of.

Every call is timed once per round, all of them in turn, round after round
(``dd.evaluate.alternated_seconds``, after one warm-up round), so load on a shared machine
falls on all of them alike; each ratio is taken within a round and reported as the median and
quartiles over the rounds (``dd.evaluate.RatioSpread``). Results go to docs/benchmarks.md
("AR flow-matching map").

    PYTHONPATH=. python3 benchmarks/bench_flow.py --batch-size 2 --seq-len 256 --threads 1

One thread on a shared machine: a 2-thread call waits whenever the other core is busy, which
scatters even alternated ratios (docs/benchmarks.md shows both).
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch
import torch.nn.functional as F
from common import machine_description
from torch import nn

from dd.evaluate import RatioSpread, alternated_seconds
from dd.flow import (
    DEFAULT_COMPUTE_DTYPE,
    DEFAULT_NUM_STEPS,
    flow_match_tokens,
    fused_posterior_mean,
)


class Block(nn.Module):
    """Pre-norm block: RMSNorm, causal attention (no RoPE: cost-neutral), RMSNorm, SwiGLU."""

    def __init__(self, dim: int, num_heads: int, ffn_hidden: int):
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.RMSNorm(dim, eps=1e-5)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.RMSNorm(dim, eps=1e-5)
        self.w1 = nn.Linear(dim, ffn_hidden, bias=False)
        self.w3 = nn.Linear(dim, ffn_hidden, bias=False)
        self.w2 = nn.Linear(ffn_hidden, dim, bias=False)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x_BLD.shape
        qkv = self.wqkv(self.attention_norm(x_BLD))
        q, k, v = qkv.view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x_BLD = x_BLD + self.wo(attn.transpose(1, 2).reshape(batch, length, dim))
        h = self.ffn_norm(x_BLD)
        return x_BLD + self.w2(F.silu(self.w1(h)) * self.w3(h))


def spread(ratio: RatioSpread, digits: int = 3) -> str:
    return f"{ratio.median:.{digits}f} ({ratio.low:.{digits}f}-{ratio.high:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS, help="map NFE")
    parser.add_argument(
        "--repeats", type=int, default=9, help="timed rounds (after one warm-up round)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--dtypes",
        default="float32,float64",
        help="map compute dtypes to time, side by side (first = default)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    num_layers, dim, num_heads, ffn_hidden = 24, 1024, 16, 2816  # LlamaGen-L (LlamaGen gpt.py)
    stack = nn.Sequential(*[Block(dim, num_heads, ffn_hidden) for _ in range(num_layers)]).eval()
    num_tokens = args.batch_size * args.seq_len
    evaluations_per_map = args.num_steps + 1  # NFE and the prior mean

    def teacher_forward(batch_size: int):
        x_BLD = torch.randn(batch_size, args.seq_len, dim)

        def forward():
            with torch.no_grad():
                return stack(x_BLD)

        return forward

    calls = {
        "forward": teacher_forward(args.batch_size),
        # Guided sampling (the teachers' default, CFG on) forwards the conditional and the
        # unconditional half together: 2 x batch rows per generated token.
        "guided": teacher_forward(2 * args.batch_size),
    }
    shapes = (("LlamaGen", 16384, 8), ("VAR", 4096, 32))
    cases = []
    for (name, vocab_size, code_dim), dtype_name in itertools.product(
        shapes, args.dtypes.split(",")
    ):
        codebook = torch.randn(vocab_size, code_dim)
        noise = torch.randn(num_tokens, code_dim)
        logits = 3.0 * torch.randn(num_tokens, vocab_size)
        dtype = getattr(torch, dtype_name)

        def run_map(codebook=codebook, noise=noise, logits=logits, dtype=dtype):
            return flow_match_tokens(
                noise, logits, codebook, num_steps=args.num_steps, compute_dtype=dtype
            )

        # NFE + 1 evaluations of the fused pass (the map runs that many per chunk), on all
        # tokens at once, t = 0.7: the map's per-(token, code) floor.
        evaluate = fused_posterior_mean(logits.to(dtype), codebook.to(dtype))
        x_NC = noise.to(dtype)

        def run_fused(evaluate=evaluate, x_NC=x_NC):
            for _ in range(evaluations_per_map):
                evaluate(x_NC, 0.7)

        case = (name, vocab_size, code_dim, dtype_name)
        calls[("map", *case)] = run_map
        calls[("fused", *case)] = run_fused
        cases.append(case)

    seconds = alternated_seconds(calls, args.repeats)
    median = {key: statistics.median(values) for key, values in seconds.items()}

    def ratio(key, over) -> RatioSpread:
        return RatioSpread.of_rounds(seconds[key], seconds[over])

    linear_flops = 2 * num_layers * (4 * dim * dim + 3 * dim * ffn_hidden)
    attention_flops = 2 * num_layers * 2 * dim * (args.seq_len + 1) / 2  # QK and AV, causal
    teacher_gflop = (linear_flops + attention_flops) / 1e9
    print(
        f"{machine_description(torch.get_num_threads())}; {num_tokens} tokens "
        f"(batch {args.batch_size} x {args.seq_len}); "
        f"map: {args.num_steps} NFE, compute dtypes {args.dtypes} "
        f"(default {str(DEFAULT_COMPUTE_DTYPE).removeprefix('torch.')}); "
        f"all calls alternated, {args.repeats} rounds after a warm-up round\n"
    )
    print(
        "Seconds: median over the rounds. Ratios: taken within each round; median "
        "(first-third quartile) over the rounds.\n"
    )
    print(
        "| what | s per call | us per token | GFLOP per token | map / one forward "
        "| map / guided teacher |"
    )
    print("|---|---|---|---|---|---|")
    teacher_us = 1e6 * median["forward"] / num_tokens
    guided_us = 1e6 * median["guided"] / num_tokens
    print(
        f"| LlamaGen-L-shaped stack, 24 x 1024, one forward | {median['forward']:.3f} | "
        f"{teacher_us:.1f} | {teacher_gflop:.3f} | 1 | |"
    )
    print(
        f"| same, guided: cond + uncond rows (batch {2 * args.batch_size}) per generated token | "
        f"{median['guided']:.3f} | {guided_us:.1f} | {2 * teacher_gflop:.3f} | "
        "| 1 |"
    )
    # per NFE x.c and w @ c, 2VC each, + the prior mean and final argmax; exp not counted
    for case in cases:
        name, vocab_size, code_dim, dtype_name = case
        map_s = median[("map", *case)]
        map_flops = (args.num_steps + 1) * 4 * vocab_size * code_dim
        print(
            f"| map, {name} shape V={vocab_size} C={code_dim}, {dtype_name} | {map_s:.3f} | "
            f"{1e6 * map_s / num_tokens:.1f} | {map_flops / 1e9:.4f} | "
            f"{spread(ratio(('map', *case), 'forward'))} | "
            f"{spread(ratio(('map', *case), 'guided'))} |"
        )
    print(f"\nguided forward / one forward: {spread(ratio('guided', 'forward'), 2)}")
    print(
        f"\n| fused pass, {evaluations_per_map} evaluations per call | ms per evaluation "
        "| ns per (token, code) pair | share of the map |"
    )
    print("|---|---|---|---|")
    for case in cases:
        name, vocab_size, code_dim, dtype_name = case
        one_s = median[("fused", *case)] / evaluations_per_map
        print(
            f"| {name} shape V={vocab_size} C={code_dim}, {dtype_name}, {num_tokens} tokens | "
            f"{1e3 * one_s:.2f} | {1e9 * one_s / (num_tokens * vocab_size):.3f} | "
            f"{spread(ratio(('fused', *case), ('map', *case)), 2)} |"
        )
    dtypes = args.dtypes.split(",")
    if len(dtypes) > 1:
        print(f"\n| map, {' / '.join(dtypes[1:])} over {dtypes[0]} | ratio |")
        print("|---|---|")
        for name, vocab_size, code_dim, dtype_name in cases:
            if dtype_name == dtypes[0]:
                continue
            key = ("map", name, vocab_size, code_dim, dtype_name)
            first = ("map", name, vocab_size, code_dim, dtypes[0])
            print(
                f"| {name} shape V={vocab_size} C={code_dim}, {dtype_name} / {dtypes[0]} | "
                f"{spread(ratio(key, first), 2)} |"
            )


if __name__ == "__main__":
    main()
