"""Accuracy vs cost of the AR flow-matching map: prints the markdown tables of
docs/flow_matching.md ("Choosing the defaults").

For each problem (codebook shape x kind of p) and solver setting it reports
- the TV distance between the token frequencies of `--draws` noise draws and p, divided by
  the exact multinomial sampling floor (1.0 = as good as exact sampling), mean over seeds;
- the fraction of `--ref-tokens` tokens equal to a high-accuracy reference solve of the same
  ODE (order 3, `--ref-steps` logSNR steps, float64, posterior argmax, t in [1e-5, 1-1e-5]).
The solves under test run in `--dtypes` (default float64, the dtype of the published tables;
with several dtypes a leading "dtype" column is added and the reference is shared).

    python3 benchmarks/flow_tradeoff.py            # the tables of docs/flow_matching.md
    python3 benchmarks/flow_tradeoff.py --quick    # smoke run
    python3 benchmarks/flow_tradeoff.py --settings logsnr:3 --nfe 16 --draws 20000 \
        --kinds peaked,flat,local --dtypes float32,float64   # float32 vs float64 table
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import dataclass

import torch

from dd.flow import (
    DEFAULT_T_END,
    DEFAULT_T_START,
    REFERENCE_DTYPE,
    code_from_state,
    expected_sampling_tv,
    solve_flow_ode,
    total_variation,
)
from dd.solver import time_schedule

REFERENCE_T_START, REFERENCE_T_END = 1e-5, 1.0 - 1e-5
PEAKED_PERPLEXITY = 32.0  # "a few dozen effective codes"
CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class Problem:
    name: str
    codebook_VC: torch.Tensor
    log_probs_V: torch.Tensor

    @property
    def perplexity(self) -> float:
        p = self.log_probs_V.exp()
        return math.exp(-(p * self.log_probs_V).sum().item())


def make_codebook(shape: str, generator: torch.Generator) -> torch.Tensor:
    """'llamagen': 256 x 8 L2-normalised rows ('llamagen16k': the real 16384 x 8 shape, much
    denser); 'var': 4096 x 32 Gaussian, std 0.5 per dim."""
    if shape in ("llamagen", "llamagen16k"):
        vocab_size = 256 if shape == "llamagen" else 16384
        codebook = torch.randn(vocab_size, 8, generator=generator, dtype=REFERENCE_DTYPE)
        return codebook / codebook.norm(dim=-1, keepdim=True)
    if shape == "var":
        return 0.5 * torch.randn(4096, 32, generator=generator, dtype=REFERENCE_DTYPE)
    raise ValueError(shape)


def temperature_for_perplexity(score_V: torch.Tensor, target: float) -> float:
    """T found by bisection so that softmax(score / T) has exp(entropy) = target."""
    low, high = -8.0, 8.0  # log T
    for _ in range(60):
        mid = 0.5 * (low + high)
        log_p = torch.log_softmax(score_V / math.exp(mid), -1)
        perplexity = math.exp(-(log_p.exp() * log_p).sum().item())
        low, high = (mid, high) if perplexity < target else (low, mid)
    return math.exp(0.5 * (low + high))


def _with_perplexity(score_V: torch.Tensor, target: float) -> torch.Tensor:
    """log_softmax(score / T) with exp(entropy) = target."""
    return torch.log_softmax(score_V / temperature_for_perplexity(score_V, target), -1)


def make_log_probs(kind: str, codebook_VC: torch.Tensor, generator: torch.Generator):
    """'peaked': random logits, ~32 effective codes; 'flat': ~V/4 effective codes;
    'local': mass on the ~32 geometric neighbours of one code (a teacher hesitating between
    similar codes; the hardest case for the ODE, whose decisions are then made late)."""
    vocab_size = codebook_VC.shape[0]
    if kind == "peaked":
        return _with_perplexity(
            torch.randn(vocab_size, generator=generator, dtype=REFERENCE_DTYPE), PEAKED_PERPLEXITY
        )
    if kind == "flat":
        return _with_perplexity(
            torch.randn(vocab_size, generator=generator, dtype=REFERENCE_DTYPE), vocab_size / 4
        )
    if kind == "local":
        anchor = codebook_VC[torch.randint(vocab_size, (1,), generator=generator)]
        score = -(codebook_VC - anchor).square().sum(-1)
        return _with_perplexity(score, PEAKED_PERPLEXITY)
    raise ValueError(kind)


def solve_ends(problem: Problem, noise_NC, times, order, dtype=REFERENCE_DTYPE):
    """End states for all noise rows, chunked, computed in `dtype`; one p shared by all rows."""
    vocab_size = problem.codebook_VC.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // vocab_size)
    codebook_VC, log_probs_V = problem.codebook_VC.to(dtype), problem.log_probs_V.to(dtype)
    ends = []
    for begin in range(0, noise_NC.shape[0], chunk):
        rows = noise_NC[begin : begin + chunk].to(dtype)
        log_probs_NV = log_probs_V.expand(rows.shape[0], vocab_size)
        ends.append(solve_flow_ode(rows, log_probs_NV, codebook_VC, times, order=order))
    return torch.cat(ends)


def tokens_of(problem: Problem, x_NC, t_end, rule):
    """Token rule at t_end, in the dtype of the end states x_NC."""
    log_probs_NV = problem.log_probs_V.to(x_NC.dtype).expand(x_NC.shape[0], -1)
    return code_from_state(x_NC, log_probs_NV, problem.codebook_VC.to(x_NC.dtype), t_end, rule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=1, help="noise seeds for the TV ratio")
    parser.add_argument("--ref-tokens", type=int, default=1_000)
    parser.add_argument("--ref-steps", type=int, default=500)
    parser.add_argument("--nfe", default="8,12,16,24")
    parser.add_argument("--shapes", default="llamagen,var")
    parser.add_argument("--kinds", default="peaked,local")
    parser.add_argument(
        "--settings",
        default="logsnr:1,logsnr:2,logsnr:3,time:1,time:2,time:3",
        help="spacing:order pairs",
    )
    parser.add_argument("--t-start", type=float, default=DEFAULT_T_START)
    parser.add_argument("--t-end", type=float, default=DEFAULT_T_END)
    parser.add_argument("--dtypes", default="float64", help="compute dtypes of the solves")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.draws, args.seeds, args.ref_tokens, args.ref_steps = 4000, 1, 500, 200
        args.nfe = "8,16"
    nfes = [int(n) for n in args.nfe.split(",")]
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split(",")]
    dtypes = args.dtypes.split(",")
    dtype_column = len(dtypes) > 1
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; draws {args.draws} x "
        f"{args.seeds} seeds; reference: order 3, {args.ref_steps} logSNR steps on "
        f"{args.ref_tokens} tokens; t in [{args.t_start}, {args.t_end}]\n"
    )
    for shape, kind in itertools.product(args.shapes.split(","), args.kinds.split(",")):
        generator = torch.Generator().manual_seed(1234)
        codebook = make_codebook(shape, generator)
        problem = Problem(f"{shape}/{kind}", codebook, make_log_probs(kind, codebook, generator))
        code_dim = codebook.shape[1]
        floor = expected_sampling_tv(problem.log_probs_V.exp(), args.draws)
        noises = [
            torch.randn(
                args.draws,
                code_dim,
                generator=torch.Generator().manual_seed(s),
                dtype=REFERENCE_DTYPE,
            )
            for s in range(args.seeds)
        ]
        ref_noise = noises[0][: args.ref_tokens]
        ref_times = time_schedule(args.ref_steps, t_start=REFERENCE_T_START, t_end=REFERENCE_T_END)
        ref_tokens = tokens_of(
            problem, solve_ends(problem, ref_noise, ref_times, 3), REFERENCE_T_END, "argmax"
        )
        ref_tv = total_variation(ref_tokens, problem.log_probs_V.exp())
        ref_floor = expected_sampling_tv(problem.log_probs_V.exp(), args.ref_tokens)
        print(
            f"### {problem.name}: V={codebook.shape[0]}, C={code_dim}, perplexity "
            f"{problem.perplexity:.1f}, floor TV {floor:.4f} at {args.draws} draws "
            f"(reference: TV/floor {ref_tv / ref_floor:.2f} on its {args.ref_tokens} tokens)\n"
        )
        print(
            "| dtype " * dtype_column + "| spacing | order | NFE | TV/floor argmax "
            "| TV/floor nearest | agree argmax | agree nearest |"
        )
        print("|---" * dtype_column + "|---|---|---|---|---|---|---|")
        for dtype_name, (spacing, order), nfe in itertools.product(dtypes, settings, nfes):
            times = time_schedule(nfe, spacing=spacing, t_start=args.t_start, t_end=args.t_end)
            ratios = {"argmax": 0.0, "nearest": 0.0}
            agree = {}
            for seed, noise in enumerate(noises):
                x_end = solve_ends(problem, noise, times, order, getattr(torch, dtype_name))
                for rule in ratios:
                    tokens = tokens_of(problem, x_end, args.t_end, rule)
                    tv = total_variation(tokens, problem.log_probs_V.exp())
                    ratios[rule] += tv / floor / len(noises)
                    if seed == 0:
                        agree[rule] = (tokens[: args.ref_tokens] == ref_tokens).double().mean()
            print(
                f"| {dtype_name} "
                * dtype_column
                + f"| {spacing} | {order} | {nfe} | {ratios['argmax']:.2f} | "
                f"{ratios['nearest']:.2f} | {agree['argmax']:.4f} | {agree['nearest']:.4f} |",
                flush=True,
            )
        print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
