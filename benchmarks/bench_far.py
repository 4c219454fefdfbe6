"""FAR's claim in miniature: the shortcut head at few head steps against the flow-matching head.

    python benchmarks/bench_far.py                      # the table of docs/far.md
    python benchmarks/bench_far.py --seeds 0 --shortcut-steps 1 8 --flow-steps 50 --cfg 1 1.5 2 3

Both shipped FAR teachers (``far-digits``: shortcut head; ``far-digits-flow``: the same
backbone and head architecture trained by flow matching only, same seed and steps) map the
same Gaussian noise (one draw per seed, shared by every row of that seed) through their
KV-cached sessions with ``M`` Euler head steps per token. Rows are run one after another in one
process: their timings come from consecutive passes, not from calls alternated round by round,
so a change of load between rows moves their ratios. Per row and seed: FID in the digits
classifier's feature space (``dd/metrics/digits.py``) of ``--fid-per-class`` x 10 samples
against the train split (as ``benchmarks/eval_tiny.py``), class accuracy, and seconds per image
(the wall time of the noise -> token map over the whole batch, decoding excluded, divided by the
batch). Printed as mean and spread (min..max) over ``--seeds``. Reference rows: real held-out
images (the floor FID at this sample size), the FAR tokenizer's reconstructions of them, and,
with ``--compare-tiny``, the discrete tiny teachers with their own sampling settings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine_description

from dd.metrics.digits import class_accuracy, frechet_distance
from teachers.data import load_digits_split
from teachers.far.sampling import draw_noise, map_noise
from teachers.protocol import ContinuousSamplingConfig
from teachers.tiny import load_tiny_teacher, tiny_sampling
from teachers.tiny.evaluate import balanced_labels, first_per_class, sample_teacher

SHORTCUT = "far-digits"
FLOW = "far-digits-flow"
DISCRETE = ("llamagen-digits", "var-digits")


def spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean = statistics.mean(values)
    return f"{mean:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def far_row(teacher, labels, noise, sampling, reference):
    start = time.perf_counter()
    tokens = map_noise(teacher, labels, noise, sampling)
    seconds = time.perf_counter() - start
    images = teacher.decode_tokens(tokens)
    return {
        "fid": frechet_distance(images, reference),
        "accuracy": class_accuracy(images, labels),
        "ms_per_image": 1000 * seconds / labels.shape[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fid-per-class", type=int, default=36)
    parser.add_argument("--shortcut-steps", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--flow-steps", type=int, nargs="*", default=[1, 2, 4, 8, 50])
    parser.add_argument(
        "--cfg", type=float, nargs="+", default=None, help="default: the teacher's default"
    )
    parser.add_argument("--compare-tiny", action="store_true", help="add the discrete teachers")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shortcut, flow = load_tiny_teacher(SHORTCUT), load_tiny_teacher(FLOW)
    cfgs = args.cfg or [shortcut.default_sampling().cfg_scale]
    train, heldout = load_digits_split("train"), load_digits_split("heldout")
    reference = train.images_01()
    labels = balanced_labels(shortcut.num_classes, args.fid_per_class)
    real = heldout.images_01()[first_per_class(heldout.labels, args.fid_per_class)]
    recon = shortcut.decode_tokens(shortcut.encode_images(real))
    rows: dict[tuple[str, str, str], dict[str, list[float]]] = {}

    def add(key, result):
        for metric, value in result.items():
            rows.setdefault(key, {}).setdefault(metric, []).append(value)

    add(("real held-out images", "-", "-"), {"fid": frechet_distance(real, reference)})
    add(("FAR tokenizer reconstructions", "-", "-"), {"fid": frechet_distance(recon, reference)})
    for seed in args.seeds:
        noise = draw_noise(shortcut, labels.shape[0], torch.Generator().manual_seed(seed))
        for cfg in cfgs:
            for name, teacher, steps_list in (
                ("shortcut head", shortcut, args.shortcut_steps),
                ("flow-matching head", flow, args.flow_steps),
            ):
                for steps in steps_list:
                    sampling = ContinuousSamplingConfig(cfg_scale=cfg, head_steps=steps)
                    result = far_row(teacher, labels, noise, sampling, reference)
                    add((name, str(steps), f"{cfg:g}"), result)
        if args.compare_tiny:
            for name in DISCRETE:
                teacher = load_tiny_teacher(name)
                start = time.perf_counter()
                _, images = sample_teacher(teacher, labels, tiny_sampling(name), seed=seed)
                seconds = time.perf_counter() - start  # includes decoding (cheap)
                add(
                    (f"{name} (discrete)", "-", f"{tiny_sampling(name).cfg_scale:g}"),
                    {
                        "fid": frechet_distance(images, reference),
                        "accuracy": class_accuracy(images, labels),
                        "ms_per_image": 1000 * seconds / labels.shape[0],
                    },
                )

    print(
        f"{machine_description(args.threads)}; seeds {args.seeds}; "
        f"{labels.shape[0]} samples per row; FID against the train split"
    )
    print("| model | head steps | CFG | FID | class acc. | ms / image |")
    print("|---|---|---|---|---|---|")
    for (name, steps, cfg), metrics in rows.items():
        fid = spread(metrics["fid"], 2)
        acc = spread(metrics["accuracy"], 3) if "accuracy" in metrics else "-"
        ms = spread(metrics["ms_per_image"], 2) if "ms_per_image" in metrics else "-"
        print(f"| {name} | {steps} | {cfg} | {fid} | {acc} | {ms} |")


if __name__ == "__main__":
    main()
