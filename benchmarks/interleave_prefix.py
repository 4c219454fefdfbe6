"""DD step 2 from different prefixes of the same pairs: does Alg. 4 order as in the paper?

    dd generate --recipe recipes/generate_tiny_var.yaml --pairs.seed 7 --pairs.num_pairs 5000 \
        --output.folder /tmp/var_pairs_s7
    python3 benchmarks/interleave_prefix.py --student var-digits --pairs /tmp/var_pairs_s7

On pairs the student never saw (another pair seed), DD step 2 (``dd.sampling.dd_step`` at the
student's second timestep) completes the same stored noise from four prefixes: DD step 1's own
(= DD 2-step), the pairs' tokens (the teacher's flow map of that same noise), the teacher's
own sampler with independent uniforms (Alg. 4's ``pre-trained-1-m``, the whole prefix), and the
pairs' tokens of another pair of the same class. FID over ALL the pairs (more images than the
demo's 360, so less sampling noise) in the digits classifier's features against the train
split, beside the pairs themselves (the teacher through the flow map).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import dd
from data_gen.shards import MANIFEST_NAME
from dd.data import load_pairs
from dd.metrics.digits import class_accuracy, frechet_distance
from dd.sampling import dd_step, sample_tokens, sample_tokens_interleaved
from teachers.data import load_digits_split
from teachers.protocol import SamplingConfig


def other_pair_of_the_class(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For every row, another row of the same label (a permutation within each class)."""
    order = torch.empty_like(labels)
    for label in labels.unique():
        rows = (labels == label).nonzero().flatten()
        order[rows] = rows[torch.randperm(rows.numel(), generator=generator)]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True)
    parser.add_argument("--pairs", required=True, help="pairs the student did not train on")
    parser.add_argument("--seed", type=int, default=11, help="the teacher's uniforms, the shuffle")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    student = dd.load_student(args.student).eval()
    teacher, geometry = student.teacher, student.geometry
    pairs = load_pairs(args.pairs, teacher_fingerprint=teacher.fingerprint())
    labels, noise, tokens = pairs.labels.long(), pairs.noise.float(), pairs.tokens.long()
    second = student.timesteps[1]
    boundary = geometry.step_ranges[second][0]
    reference = load_digits_split("train").images_01()
    generator = torch.Generator().manual_seed(args.seed)
    uniforms = torch.rand(labels.shape[0], geometry.num_tokens, generator=generator)
    name = args.student.rstrip("/").split("/")[-1]
    manifest = json.loads((Path(args.pairs) / MANIFEST_NAME).read_text())
    sampling = SamplingConfig(**manifest["settings"]["sampling"])  # the pairs' own settings

    def kept(prefix_tokens: torch.Tensor) -> torch.Tensor:
        prefix_tokens = prefix_tokens.clone()
        prefix_tokens[:, boundary:] = 0
        return prefix_tokens

    with torch.no_grad():
        rows = {
            "pairs (the teacher's flow map of the noise)": tokens,
            "DD 1-step": sample_tokens(student, labels, noise, steps=1),
            "DD 2-step (DD step 1's prefix)": sample_tokens(student, labels, noise, steps=2),
            "pairs' prefix of the same noise + DD step 2": dd_step(
                student, labels, noise, kept(tokens), second
            ),
            "teacher's sampler prefix (Alg. 4, whole prefix) + DD step 2": (
                sample_tokens_interleaved(
                    student, labels, noise, (0, second), uniforms_BN=uniforms, sampling=sampling
                )
            ),
            "pairs' prefix of another pair of the class + DD step 2": dd_step(
                student,
                labels,
                noise,
                kept(tokens[other_pair_of_the_class(labels, generator)]),
                second,
            ),
        }
        print(f"{name}: {labels.shape[0]} pairs of {args.pairs}, DD step 2 from AR step {second}")
        print("| tokens | FID (all pairs) | class accuracy |")
        print("|---|---|---|")
        for row, row_tokens in rows.items():
            images = teacher.decode_tokens(row_tokens).float()
            fid = frechet_distance(images, reference)
            print(f"| {row} | {fid:.2f} | {100 * class_accuracy(images, labels):.1f}% |")


if __name__ == "__main__":
    main()
