"""How well the teacher-aligned LlamaGen student's ``input_proj`` starts: the relative residual
of its least-squares initialisation (``teachers.llamagen.student.init_as_least_squares``, codebook
vectors -> the teacher's token embeddings, with bias), on a shipped tiny teacher.

    PYTHONPATH=. python3 benchmarks/input_proj_residual.py

Prints ||input_proj(codebook) - embeddings|| / ||embeddings|| (Frobenius norms, float64),
0 if the embeddings were an affine function of the codes, and for scale the same for the best
constant map (the mean embedding). Quoted in docs/distillation.md.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from teachers.llamagen.student import init_as_least_squares
from teachers.tiny import load_tiny_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="llamagen-digits", help="a tiny LlamaGen teacher")
    args = parser.parse_args()
    teacher = load_tiny_teacher(args.teacher)
    codebook_VC = teacher.codebook.double()
    embeddings_VD = teacher.gpt.tok_embeddings.weight.detach().double()
    layer = nn.Linear(codebook_VC.shape[1], embeddings_VD.shape[1]).double()
    init_as_least_squares(layer, codebook_VC, embeddings_VD)
    with torch.no_grad():
        residual = torch.linalg.norm(layer(codebook_VC) - embeddings_VD)
    relative = float(residual / torch.linalg.norm(embeddings_VD))
    centred = embeddings_VD - embeddings_VD.mean(0)
    constant = float(torch.linalg.norm(centred) / torch.linalg.norm(embeddings_VD))
    print(
        f"{args.teacher}: codebook {tuple(codebook_VC.shape)} -> token embeddings "
        f"{tuple(embeddings_VD.shape)}; relative residual of the least-squares input_proj: "
        f"{relative:.4f} (the mean embedding alone: {constant:.4f})"
    )


if __name__ == "__main__":
    main()
