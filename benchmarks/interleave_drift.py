"""How far each sampler's tokens are from the teacher's own tokens of the same noise, position by
position, for a continuous-token student (where that reference exists: the teacher's sampler is
a deterministic map of the noise, and the pairs the student learnt from are that map).

    python3 benchmarks/interleave_drift.py --student far-digits --samples 1000

Rows: DD 1-step, DD 2-step and Alg. 4 over the teacher's presets
(``dd.continuous_sampling.sample_tokens_interleaved``: the teacher regenerates its range from the
same noise, after DD step 1's prefix). Columns: the RMS distance to the teacher's tokens of the
same noise at each position, over the RMS of those tokens. Before ``first`` Alg. 4 keeps DD step
1's tokens; on its range the teacher continues DD's prefix, and this shows whether that
continuation lands nearer the teacher's own tokens than DD's did, or drifts further (an AR model
fed a prefix it did not make compounds the prefix's error).
"""

from __future__ import annotations

import argparse

import torch
from common import machine_description

import dd
from dd.continuous_sampling import sample_tokens, sample_tokens_interleaved
from dd.evaluate import interleave_presets
from dd.sampling import draw_noise
from teachers.protocol import ContinuousTeacher
from teachers.sampling import map_continuous_noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="far-digits", help="a shipped name or a folder")
    parser.add_argument("--preset-key", default="far-digits", help="dd.interleave presets")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    student = dd.load_student(args.student).eval()
    teacher = student.teacher
    if not isinstance(teacher, ContinuousTeacher):
        parser.error("the teacher's tokens of the same noise are defined for continuous tokens")
    n = student.geometry.num_tokens
    labels = torch.arange(args.samples) % student.num_classes
    noise = draw_noise(args.samples, n, student.code_dim, torch.Generator().manual_seed(args.seed))
    sampling = teacher.default_sampling()
    reference = map_continuous_noise(teacher, labels, noise, sampling)
    rows = {
        "DD 1-step": sample_tokens(student, labels, noise, 1),
        "DD 2-step": sample_tokens(student, labels, noise, 2),
    }
    for first, second in interleave_presets(student, args.preset_key):
        rows[f"Alg. 4 [{first}, {second})"] = sample_tokens_interleaved(
            student, labels, noise, (first, second), sampling=sampling
        )
    scale = reference.pow(2).mean().sqrt()
    print(f"machine: {machine_description(args.threads)}")
    print(
        f"student {args.student}, timesteps {student.timesteps}, {args.samples} samples, noise "
        f"seed {args.seed}, teacher sampling {sampling}"
    )
    print("| sampler | " + " | ".join(str(i) for i in range(n)) + " |")
    print("|---|" + "---|" * n)
    for name, tokens in rows.items():
        distance = (tokens - reference).pow(2).mean(-1).mean(0).sqrt() / scale
        print(f"| {name} | " + " | ".join(f"{d:.2f}" for d in distance.tolist()) + " |")


if __name__ == "__main__":
    main()
