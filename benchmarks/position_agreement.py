"""Where a student's one-step tokens part from the teacher's: agreement by token position.

    python3 benchmarks/position_agreement.py --student llamagen-digits --pairs pairs/tiny_llamagen
    python3 benchmarks/position_agreement.py --student A B --pairs P --plot docs/images/x.png

On the last ``--heldout`` pairs of the folder (held out from training by the tiny recipes),
DD step 1 from the stored noise (``dd.sampling.sample_tokens``, the card's sampling kappa)
against the stored tokens (the teacher's flow map of the same noise): the share of equal
tokens at every position, in AR order. Positions late in a one-token-per-step chain must be
inferred through every earlier token; this shows how agreement decays along it.
"""

from __future__ import annotations

import argparse

import torch

import dd
from dd.data import load_pairs, split_heldout
from dd.sampling import sample_tokens

BATCH = 250


def position_agreement(student, pairs, steps: int = 1) -> torch.Tensor:
    """Agreement ``[n]`` of DD's ``steps``-step tokens with the pairs' tokens, by position."""
    equal = []
    for start in range(0, len(pairs), BATCH):
        rows = torch.arange(start, min(start + BATCH, len(pairs)))
        tokens = sample_tokens(
            student, pairs.labels[rows].long(), pairs.noise[rows].float(), steps=steps
        )
        equal.append(tokens.cpu() == pairs.tokens[rows].long())
    return torch.cat(equal).double().mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", nargs="+", required=True, help="names or folders")
    parser.add_argument("--pairs", required=True, help="the teacher's pair folder")
    parser.add_argument("--heldout", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="PNG of agreement against position")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    curves = {}
    for path in args.student:
        student = dd.load_student(path).eval()
        pairs = load_pairs(args.pairs, teacher_fingerprint=student.teacher.fingerprint())
        _, heldout = split_heldout(pairs, args.heldout)
        curves[path] = curve = position_agreement(student, heldout)
        print(f"{path}: {len(heldout)} held-out pairs, mean agreement {curve.mean():.4f}")
        print("position: " + " ".join(f"{i}:{a:.2f}" for i, a in enumerate(curve.tolist())))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 3.2))
        for path, curve in curves.items():
            axis.plot(curve.numpy(), marker=".", label=path)
        axis.set_xlabel("token position (AR order)")
        axis.set_ylabel("DD 1-step = teacher's token")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
