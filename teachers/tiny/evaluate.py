"""Judging a tiny teacher on its domain: samples, the ``onestep*`` reference, image grids.

- ``sample_teacher``: plain AR sampling through the teacher's own session
  (``teachers.sampling.sample_tokens``), decoded to images in ``[0, 1]``.
- ``independent_token_sampler``: the ``onestep*`` idea of the DD paper (FACTS.md section 1):
  every position drawn independently from the per-class, per-position token frequencies of
  the teacher's own samples, i.e. the best any model that ignores dependencies between tokens
  can do (paper Prop. 3.1).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from teachers.protocol import SamplingConfig, Teacher
from teachers.sampling import sample_tokens

SAMPLE_BATCH = 250


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """``[0]*per_class + [1]*per_class + ...``."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` items of every class (the FID subsets)."""
    return torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in labels.unique()])


def sample_teacher(
    teacher: Teacher,
    labels: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    seed: int = 0,
    batch_size: int = SAMPLE_BATCH,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens ``[N, n]``, images ``[N, 3, H, W]`` in ``[0, 1]``) for ``labels [N]``.

    One generator seeded with ``seed`` serves the batches in order: the result depends on
    ``batch_size`` (kept fixed by the callers)."""
    generator = torch.Generator().manual_seed(seed)
    tokens, images = [], []
    for batch in tqdm(labels.split(batch_size), desc="sampling", disable=not progress):
        batch_tokens = sample_tokens(teacher, batch, sampling, generator=generator)
        tokens.append(batch_tokens)
        with torch.no_grad():
            images.append(teacher.decode_tokens(batch_tokens).float())
    return torch.cat(tokens), torch.cat(images)


def token_frequencies(
    tokens: torch.Tensor, labels: torch.Tensor, num_classes: int, vocab_size: int
) -> torch.Tensor:
    """Per-class, per-position token frequencies ``[num_classes, n, V]`` (rows sum to 1)."""
    n = tokens.shape[1]
    counts = torch.zeros(num_classes, n, vocab_size)
    positions = torch.arange(n).expand_as(tokens)
    counts.index_put_(
        (labels[:, None].expand_as(tokens), positions, tokens), torch.ones(()), accumulate=True
    )
    totals = counts.sum(-1, keepdim=True)
    if (totals == 0).any():
        missing = sorted({int(c) for c in (totals[:, 0, 0] == 0).nonzero().flatten()})
        raise ValueError(f"no samples of classes {missing} to estimate frequencies from")
    return counts / totals


def independent_token_sampler(
    frequencies: torch.Tensor, labels: torch.Tensor, *, seed: int = 0
) -> torch.Tensor:
    """Tokens ``[N, n]``: every position drawn independently from ``frequencies[label]``."""
    generator = torch.Generator().manual_seed(seed)
    probs_NnV = frequencies[labels]
    flat = torch.multinomial(probs_NnV.reshape(-1, probs_NnV.shape[-1]), 1, generator=generator)
    return flat.reshape(probs_NnV.shape[:2])


def image_grid(images_01: torch.Tensor, rows: int, *, scale: int = 4, pad: int = 1):
    """A PIL image of ``images [rows * cols, 3, H, W]`` (row-major), each up-scaled ``scale``x
    (nearest), separated by ``pad`` grey pixels."""
    from PIL import Image

    count, _, height, width = images_01.shape
    cols = count // rows
    images = images_01[: rows * cols].clamp(0, 1)
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cell_h, cell_w = height * scale + pad, width * scale + pad
    canvas = torch.full((3, rows * cell_h + pad, cols * cell_w + pad), 0.5)
    for index in range(rows * cols):
        r, c = divmod(index, cols)
        top, left = pad + r * cell_h, pad + c * cell_w
        canvas[:, top : top + height * scale, left : left + width * scale] = images[index]
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)
