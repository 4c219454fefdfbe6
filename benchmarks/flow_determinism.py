"""Does a token depend on what else is in the batch? Counts tokens that change.

`flow_match_tokens` solves every token from its own noise and p, but the kernels under it
(the fused attention pass, the final addmm) block rows by batch size, so round-off can differ
in the last bit between batch compositions (docs/flow_matching.md, "Numerics"). A token
changes only if its trajectory ends within that round-off of a decision boundary. This
script solves `--tokens` tokens, each with its own `local` p (mass on the geometric
neighbours of a random code: the late-decision case), once all together and again permuted
and in chunks of 1/3/5/17/100 tokens, and prints how many tokens differ, per shape and
compute dtype.

    PYTHONPATH=. python3 benchmarks/flow_determinism.py
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from flow_tradeoff import PEAKED_PERPLEXITY, make_codebook, temperature_for_perplexity

from dd.flow import flow_match_tokens

CHUNK_TOKENS = (1, 3, 5, 17, 100)


def local_log_probs(codebook_VC: torch.Tensor, num_tokens: int, generator) -> torch.Tensor:
    """[num_tokens, V]: each row peaked on the neighbours of its own random anchor code; one
    temperature for all rows, set so that the first row has perplexity 32."""
    anchors = torch.randint(codebook_VC.shape[0], (num_tokens,), generator=generator)
    score_NV = -torch.cdist(codebook_VC[anchors], codebook_VC).square()
    temperature = temperature_for_perplexity(score_NV[0], PEAKED_PERPLEXITY)
    return torch.log_softmax(score_NV / temperature, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--shapes", default="llamagen,var,llamagen16k")
    parser.add_argument("--dtypes", default="float32,float64")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.tokens} tokens")
    print(
        "| shape | compute dtype | permuted | "
        + " | ".join(f"chunks of {k}" for k in CHUNK_TOKENS)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(CHUNK_TOKENS))
    start = time.perf_counter()
    for shape, dtype_name in itertools.product(args.shapes.split(","), args.dtypes.split(",")):
        generator = torch.Generator().manual_seed(0)
        codebook_VC = make_codebook(shape, generator)
        vocab_size, code_dim = codebook_VC.shape
        log_probs_NV = local_log_probs(codebook_VC, args.tokens, generator)
        noise_NC = torch.randn(args.tokens, code_dim, generator=generator, dtype=torch.float64)
        dtype = getattr(torch, dtype_name)

        def tokens(noise, log_probs, chunk_tokens=args.tokens, dtype=dtype, codebook=codebook_VC):
            return flow_match_tokens(
                noise,
                log_probs,
                codebook,
                compute_dtype=dtype,
                max_elements_per_chunk=chunk_tokens * codebook.shape[0],
            )

        together = tokens(noise_NC, log_probs_NV)
        permutation = torch.randperm(args.tokens, generator=generator)
        permuted = tokens(noise_NC[permutation], log_probs_NV[permutation])
        counts = [int((permuted != together[permutation]).sum())]
        for chunk_tokens in CHUNK_TOKENS:
            counts.append(int((tokens(noise_NC, log_probs_NV, chunk_tokens) != together).sum()))
        print(
            f"| {shape} ({vocab_size} x {code_dim}) | {dtype_name} | "
            + " | ".join(str(count) for count in counts)
            + " |",
            flush=True,
        )
    print(f"\n(differing tokens out of {args.tokens}; total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
