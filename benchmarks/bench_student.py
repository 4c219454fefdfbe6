"""One DD step against one full-sequence teacher forward at the same batch (random weights).

    python3 benchmarks/bench_student.py --teacher llamagen-digits --batch-size 64
    python3 benchmarks/bench_student.py --student llamagen-digits --threads 1 --repeats 41
    python3 benchmarks/bench_student.py --teacher llamagen-B --batch-size 4 --repeats 3
    python3 benchmarks/bench_student.py --teacher var-d16 --batch-size 4 --repeats 3

A one-step DD sample is one student forward (``dd.sampling.sample_tokens`` with ``steps=1``:
the forward, the prefix rule, the argmax / nearest-code choice, each head run only at the
tokens it chooses) plus the decoder; the floor it is held to is one full-sequence teacher
forward (``logits_teacher_forcing``). Also timed beside them: the same step with both heads at
every token, as ``choose_tokens`` reads the full outputs (how ``dd_step`` ran before each head
was restricted to its own tokens). All are timed
in the same run, alternating call by call, median of ``--repeats``; the DD step / forward ratio
is also taken round by round (each step against the forward just before it) with its quartiles,
which a slow spell of a shared machine moves less. Also timed: the two other parts of
an all-in sample: the decoder and the per-sample seeded noise streams (``randomness_at``). Their
sum over the forward is the all-in ratio's floor for a one-step generator on this teacher.
``llamagen-B`` / ``var-d16`` are the official shapes with random weights (speed does not depend
on the values); the tiny names are the shipped teachers. ``--student NAME`` times a shipped
student (or a student folder) as users sample with it, instead of a random-weight one built with
the benchmark's timesteps.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import machine_description
from torch.utils.flop_counter import FlopCounterMode

from dd.checkpoint import load_student
from dd.evaluate import alternated_seconds, teacher_forward
from dd.sampling import choose_tokens, randomness_at, sample_tokens
from dd.student import DDStudent
from teachers.llamagen import GPT, GPTConfig, LlamaGenTeacher, VQConfig, VQModel
from teachers.tiny import load_tiny_teacher
from teachers.var import VAR, VQVAE, VARConfig, VARTeacher, VQVAEConfig

# name -> (timesteps, split token) of the paper's released settings.
SHAPES = {"llamagen-B": ((0, 80), 80), "var-d16": ((0, 5), 55)}


def build_teacher(name: str):
    torch.manual_seed(0)
    if name == "llamagen-B":
        gpt = GPT(GPTConfig.preset("B", 16))
        return LlamaGenTeacher(gpt, VQModel(VQConfig.preset("VQ-16")))
    if name == "var-d16":
        return VARTeacher(
            VAR(VARConfig.preset("d16")), VQVAE(VQVAEConfig.preset("vae_ch160v4096z32"))
        )
    return load_tiny_teacher(name)


def random_student(name: str, noise_logit_scale: float | None) -> DDStudent:
    """A random-weight student of teacher ``name`` with the paper's timesteps and split for
    the official shapes, ``(0, num_steps // 3)`` and that step's first token otherwise."""
    teacher = build_teacher(name)
    geometry = teacher.geometry
    if name in SHAPES:
        timesteps, split = SHAPES[name]
    else:
        second = geometry.num_steps // 3
        timesteps, split = (0, second), geometry.step_ranges[second][0]
    return DDStudent(teacher, timesteps, split, noise_logit_scale=noise_logit_scale).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="default: llamagen-digits")
    parser.add_argument(
        "--student", default=None, help="a shipped student or student folder (its own teacher)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--noise-logit-scale", type=float, default=None, help="build the student with the prior"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.student is not None:
        if args.teacher is not None or args.noise_logit_scale is not None:
            parser.error("--student loads a student with its own teacher and prior")
        student = load_student(args.student).eval()
    else:
        args.teacher = args.teacher or "llamagen-digits"
        student = random_student(args.teacher, args.noise_logit_scale)
    teacher, geometry = student.teacher, student.geometry
    batch = args.batch_size
    labels = torch.randint(teacher.num_classes, (batch,))
    tokens = torch.randint(teacher.vocab_size, (batch, geometry.num_tokens))
    noise = randomness_at(0, range(batch), geometry.num_tokens, teacher.code_dim).noise_BNC

    forward = teacher_forward(teacher, batch)

    def one_forward():
        with torch.no_grad():
            forward()

    def one_step():
        sample_tokens(student, labels, noise, steps=1)

    boundary_B = torch.zeros(batch, dtype=torch.long)
    no_prefix = torch.zeros(batch, geometry.num_tokens, dtype=torch.long)

    def full_heads_step():  # step 1 with both heads at every token, then choose_tokens
        with torch.no_grad():
            kappa = student.sampling_noise_logit_scale
            outputs = student(labels, noise, boundary_B, no_prefix, noise_logit_scale=kappa)
            choose_tokens(student, *outputs)

    def decode():
        with torch.no_grad():
            teacher.decode_tokens(tokens)

    def draw():
        randomness_at(0, range(batch), geometry.num_tokens, teacher.code_dim)

    def flops_per_image(call) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call()
        return counter.get_total_flops() / batch

    flops = {"teacher": flops_per_image(one_forward), "decode": flops_per_image(decode)}
    seconds = alternated_seconds(
        {
            "teacher": one_forward,
            "student": one_step,
            "full heads": full_heads_step,
            "decode": decode,
            "noise": draw,
        },
        args.repeats,
    )
    median = {name: statistics.median(values) for name, values in seconds.items()}
    rounds = zip(seconds["student"], seconds["teacher"], strict=True)
    paired = [step / forward for step, forward in rounds]
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(f"machine: {machine_description(args.threads)}, float32, CPU")
    what = f"the teacher of student {args.student}" if args.student else f"teacher {args.teacher}"
    print(f"{what}: {geometry.num_tokens} tokens, batch {batch}")
    print("| measurement | ms per batch |")
    print("|---|---|")
    print(f"| one full-sequence teacher forward | {1000 * median['teacher']:.1f} |")
    print(f"| one DD step (student forward + token choice) | {1000 * median['student']:.1f} |")
    print(
        f"| one DD step with both heads at every token (``choose_tokens`` of the full outputs) "
        f"| {1000 * median['full heads']:.1f} |"
    )
    print(f"| decoder | {1000 * median['decode']:.1f} |")
    print(f"| per-sample seeded noise streams (noise + uniforms) | {1000 * median['noise']:.1f} |")
    print(
        f"FLOP per image (torch.utils.flop_counter: matrix products and convolutions): teacher "
        f"forward {flops['teacher'] / 1e6:.1f} M, decoder {flops['decode'] / 1e6:.1f} M"
    )
    print(f"ratio DD step / teacher forward: {median['student'] / median['teacher']:.3f}")
    print(
        f"round-by-round ratio over {len(paired)} rounds: median {quartiles[1]:.3f}, quartiles "
        f"{quartiles[0]:.3f} .. {quartiles[2]:.3f}"
    )
    heads = [a / b for a, b in zip(seconds["student"], seconds["full heads"], strict=True)]
    print(
        "DD step / the step with both heads everywhere, round by round: median "
        f"{statistics.median(heads):.3f} (each head only where it chooses: dd.sampling.dd_step)"
    )
    floor = 1 + (median["decode"] + median["noise"]) / median["teacher"]
    all_in = (median["student"] + median["decode"] + median["noise"]) / median["teacher"]
    print(
        f"all-in ratio (step + decoder + noise) / forward: {all_in:.3f}; floor at a DD step "
        f"as fast as the forward: {floor:.3f}"
    )


if __name__ == "__main__":
    main()
