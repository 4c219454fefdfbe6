"""LlamaGen teacher speed: KV-cached sampling vs one full-sequence forward (random weights).

The full-sequence forward at the same batch is the floor a one-step generator built on this
backbone is held to (the DD student runs one such pass). Random weights: speed does not
depend on the values. The forwards are timed as one block, then the sampling runs as another
(consecutive passes, not alternated round by round): load that changes between the blocks moves
their ratio. Results go to docs/benchmarks.md ("LlamaGen teacher").

    python3 benchmarks/bench_llamagen.py --preset B --batch-size 8
"""

from __future__ import annotations

import argparse

import torch
from common import machine_description, median_seconds

from teachers.llamagen import DD_PAPER_SAMPLING, GPT, GPTConfig, LlamaGenTeacher, VQConfig, VQModel
from teachers.sampling import sample_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="B")
    parser.add_argument("--image-tokens-per-side", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sampling-repeats", type=int, default=2)
    parser.add_argument("--forward-repeats", type=int, default=3)
    parser.add_argument("--decode", action="store_true", help="also time the VQ-16 decoder")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig.preset(args.preset, args.image_tokens_per_side)
    gpt = GPT(config).eval()
    vq = VQModel(VQConfig.preset("VQ-16", codebook_size=config.vocab_size)).eval()
    teacher = LlamaGenTeacher(gpt, vq)  # sampling runs the GPT only; the VQ decodes below
    num_params = sum(p.numel() for p in gpt.parameters())
    labels = torch.randint(0, config.num_classes, (args.batch_size,))
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size))

    def sample() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return sample_tokens(teacher, labels, DD_PAPER_SAMPLING, generator=generator)

    def full_forward() -> torch.Tensor:
        with torch.no_grad():
            return gpt(labels, tokens[:, :-1])  # [class, x_1..x_{n-1}] -> n logits

    full_forward()  # warm-up
    forward_s = median_seconds(full_forward, args.forward_repeats)
    sampling_s = median_seconds(sample, args.sampling_repeats)

    print(f"machine: {machine_description(args.threads)}, float32, CPU")
    print(
        f"model: LlamaGen-{args.preset} c2i, {num_params / 1e6:.1f}M params, "
        f"{config.block_size} tokens, batch {args.batch_size}, random weights"
    )
    print("| measurement | seconds per batch | images/s |")
    print("|---|---|---|")
    print(
        f"| KV-cached sampling, {config.block_size} steps, CFG 2.0 ([cond; null] = "
        f"{2 * args.batch_size} rows) | {sampling_s:.2f} | {args.batch_size / sampling_s:.2f} |"
    )
    print(
        f"| one full-sequence forward ({config.seq_len - 1} positions, no CFG) | "
        f"{forward_s:.3f} | {args.batch_size / forward_s:.2f} |"
    )
    print(f"| ratio sampling / forward | {sampling_s / forward_s:.1f}x | |")
    if args.decode:

        def decode() -> torch.Tensor:
            with torch.no_grad():
                return vq.decode_code(tokens, (config.grid_size, config.grid_size))

        decode_s = median_seconds(decode, 1)
        print(
            f"| VQ-16 decode to {config.grid_size * 16} px | {decode_s:.2f} | "
            f"{args.batch_size / decode_s:.2f} |"
        )


if __name__ == "__main__":
    main()
