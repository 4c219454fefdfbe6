"""VAR teacher speed: 10-scale KV-cached CFG sampling vs one full-sequence forward.

Random weights of the release shapes (speed does not depend on the values): the VAR
transformer of ``--preset`` (d16 by default) at 256 px (patch_nums 1..16, 680 tokens) and
the official VQVAE ``vae_ch160v4096z32`` for decoding. Sampling runs the batch as
``[cond; null]`` (2 x batch rows) with the README FID settings (cfg 1.5, top-k 900, top-p
0.96); its time is split into the transformer scales and the VQVAE decode. The full-sequence
forward (block-causal mask, 680 tokens, no CFG) at the same batch is the floor a one-step
student built on this backbone is held to. The forwards are timed as one block, then the
sampling runs as another (consecutive passes, not alternated round by round): load that changes
between the blocks moves their ratio. Results go to docs/benchmarks.md ("VAR teacher").

    python3 benchmarks/bench_var.py --preset d16 --batch-size 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine_description, median_seconds

from teachers.sampling import sample_from_log_probs
from teachers.var import README_FID_SAMPLING, VAR, VQVAE, VARConfig, VARTeacher, VQVAEConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="d16")
    parser.add_argument("--vae-preset", default="vae_ch160v4096z32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sampling-repeats", type=int, default=1)
    parser.add_argument("--forward-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    var = VAR(VARConfig.preset(args.preset)).eval().requires_grad_(False)
    vae = VQVAE(VQVAEConfig.preset(args.vae_preset)).eval().requires_grad_(False)
    teacher = VARTeacher(var, vae)
    config = var.config
    labels = torch.randint(0, config.num_classes, (args.batch_size,))
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, config.num_tokens))
    with torch.no_grad():
        x_BLCv = vae.quantize.indices_to_var_input(tokens)

    timings: dict[str, list[float]] = {"scales": [], "decode": []}

    def sample() -> None:
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        with teacher.start(labels, README_FID_SAMPLING) as session:
            for _ in range(teacher.geometry.num_steps):
                session.accept(sample_from_log_probs(session.next_log_probs(), generator))
            middle = time.perf_counter()
            session.image()
        timings["scales"].append(middle - start)
        timings["decode"].append(time.perf_counter() - middle)

    def full_forward() -> None:
        with torch.no_grad():
            var(labels, x_BLCv)

    full_forward()  # warm-up
    forward_s = median_seconds(full_forward, args.forward_repeats)
    sampling_s = median_seconds(sample, args.sampling_repeats)
    scales_s, decode_s = statistics.median(timings["scales"]), statistics.median(timings["decode"])

    B = args.batch_size
    num_params = sum(p.numel() for p in var.parameters())
    print(f"machine: {machine_description(args.threads)}")
    print(
        f"VAR-{args.preset} ({num_params / 1e6:.0f}M params, {config.num_tokens} tokens, "
        f"{config.num_scales} scales), VQVAE {args.vae_preset} ({vae.config.image_size} px), "
        f"batch {B}"
    )
    print(
        f"sampling (10 scales, CFG, incl. decode): {sampling_s:.2f} s/batch = "
        f"{B / sampling_s:.3f} images/s"
    )
    print(f"  transformer scales: {scales_s:.2f} s/batch = {B / scales_s:.3f} images/s")
    print(f"  VQVAE decode:       {decode_s:.2f} s/batch")
    print(
        f"full-sequence forward (block-causal, {config.num_tokens} tokens, no CFG): "
        f"{forward_s:.2f} s/batch = {forward_s / B:.3f} s/image"
    )
    print(f"sampling / full forward: {sampling_s / forward_s:.1f}x")


if __name__ == "__main__":
    main()
