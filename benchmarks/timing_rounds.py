"""How much the speed verdicts move between runs: the ratio of DD 1-step to one teacher forward
(``dd.evaluate.forward_seconds_per_image``) measured again and again, for several round counts.

    PYTHONPATH=. python3 benchmarks/timing_rounds.py \
        --student <demo>/students/llamagen-digits-4000-1050-5ab601c1/student \
        --rounds 5 15 --trials 4

Each trial runs the measurement once for every round count, in turn (so load on the machine
falls on all of them alike), at the evaluation batch of the demo (250), one thread. Printed for
each round count: the all-in ratio (``"dd 1-step all-in"``: noise streams, model call and
decoding, over the forward) and the model-call ratio, each as the median over rounds of the
ratio within a round (what ``dd demo``'s verdict reads) and as the ratio of the two median
times, trial by trial, with their range over the trials.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import machine_description

from dd.eval_command import build_setup
from dd.evaluate import forward_seconds_per_image, parse_methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="a student folder or a shipped name")
    parser.add_argument("--rounds", type=int, nargs="+", default=[5, 15])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = build_setup(args.student, None, None)
    samplers = setup.samplers
    one_step = parse_methods(["dd:1"], samplers)
    found: dict[int, dict[str, list[float]]] = {
        rounds: {"all-in": [], "all-in of medians": [], "model": [], "model of medians": []}
        for rounds in args.rounds
    }
    print(f"{setup.teacher_name}, batch {args.batch_size}, {machine_description(args.threads)}")
    for trial in range(args.trials):
        for rounds in args.rounds:
            timing = forward_seconds_per_image(
                samplers, one_step, args.batch_size, seed=0, repeats=rounds
            )
            seconds, forward = timing.seconds_per_image, timing.seconds_per_image["forward"]
            row = found[rounds]
            row["all-in"].append(timing.to_forward["dd 1-step all-in"].median)
            row["all-in of medians"].append(seconds["dd 1-step all-in"] / forward)
            row["model"].append(timing.to_forward["dd 1-step"].median)
            row["model of medians"].append(seconds["dd 1-step"] / forward)
            print(
                f"trial {trial}, {rounds} rounds: all-in {row['all-in'][-1]:.3f}x "
                f"(of medians {row['all-in of medians'][-1]:.3f}x), model call "
                f"{row['model'][-1]:.3f}x, forward {1000 * forward:.2f} ms/image",
                flush=True,
            )
    print("\n| rounds | figure | trials | median | range |\n|---|---|---|---|---|")
    for rounds, row in found.items():
        for figure, values in row.items():
            shown = " ".join(f"{v:.2f}" for v in values)
            print(
                f"| {rounds} | {figure} | {shown} | {statistics.median(values):.2f} | "
                f"{min(values):.2f}-{max(values):.2f} |"
            )


if __name__ == "__main__":
    main()
