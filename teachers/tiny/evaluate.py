"""Judging a tiny teacher on its domain: samples, the ``onestep*`` reference, image grids.

- ``sample_teacher``: plain AR sampling through the teacher's own session
  (``teachers.sampling.sample_tokens``), decoded to images in ``[0, 1]``.
- the ``onestep*`` reference (every position drawn independently from per-class, per-position
  token frequencies) lives with the other baselines in ``dd.baselines``.
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
