"""How much of the AR flow-matching map a one-parameter rule explains (the student's prior).

For each shipped tiny teacher: run the teacher's own sampler to collect its guided next-token
log-probabilities ``log p`` at every position, draw fresh noise ``eps``, map it with the flow
map (``dd.flow.flow_match_tokens``, the pair-generation defaults) and compare the tokens with

- the mode ``argmax_j log p_j`` (what a student that ignores its noise can reach), and
- ``argmax_j (log p_j + kappa <eps, c_j>)`` over a grid of ``kappa`` (Eq. 3's posterior logits
  at a single effective time: ``DDStudent(noise_logit_scale=kappa)`` builds this in).

    PYTHONPATH=. python3 benchmarks/noise_logit_prior.py [--batch-per-class 8] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from dd.flow import flow_match_tokens
from teachers.tiny import load_tiny_teacher
from teachers.tiny.registry import tiny_sampling

KAPPAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


@torch.no_grad()
def teacher_log_probs(name: str, batch_per_class: int, seed: int):
    """Guided log-probs ``[N, V]`` along the teacher's own samples, and the codebook."""
    teacher = load_tiny_teacher(name)
    labels = torch.arange(teacher.num_classes).repeat(batch_per_class)
    generator = torch.Generator().manual_seed(seed)
    collected = []
    with teacher.start(labels, tiny_sampling(name)) as session:
        for _ in teacher.geometry.step_ranges:
            log_probs_BLV = session.next_log_probs().float()
            collected.append(log_probs_BLV)
            probs_NV = log_probs_BLV.softmax(-1).reshape(-1, log_probs_BLV.shape[-1])
            drawn = torch.multinomial(probs_NV, 1, generator=generator)
            session.accept(drawn.reshape(log_probs_BLV.shape[:-1]))
    vocab = teacher.codebook.shape[0]
    return torch.cat(collected, 1).reshape(-1, vocab), teacher.codebook.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-per-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| teacher | positions | mode | " + " | ".join(f"kappa {k}" for k in KAPPAS) + " |")
    print("|---|---|---|" + "---|" * len(KAPPAS))
    for name in ("llamagen-digits", "var-digits"):
        log_probs_NV, codebook_VC = teacher_log_probs(name, args.batch_per_class, args.seed)
        generator = torch.Generator().manual_seed(args.seed + 1)
        noise_NC = torch.randn(log_probs_NV.shape[0], codebook_VC.shape[1], generator=generator)
        mapped_N = flow_match_tokens(noise_NC, log_probs_NV, codebook_VC)
        similarity_NV = noise_NC @ codebook_VC.T
        mode = (log_probs_NV.argmax(-1) == mapped_N).float().mean()
        rule = [
            (((log_probs_NV + kappa * similarity_NV).argmax(-1)) == mapped_N).float().mean()
            for kappa in KAPPAS
        ]
        cells = " | ".join(f"{100 * float(r):.1f}%" for r in rule)
        print(f"| {name} | {len(mapped_N)} | {100 * float(mode):.1f}% | {cells} |")


if __name__ == "__main__":
    main()
