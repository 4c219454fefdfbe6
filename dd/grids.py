"""Labelled image grids: one row per method, one column per sample (same labels and seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

GRID_SCALE = 4  # nearest-neighbour up-scaling of each tiny image
GRID_PAD = 2
LABEL_WIDTH = 190  # pixels for the method names
HEADER_HEIGHT = 16  # pixels for the class labels
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def to_pil(images_01: torch.Tensor, scale: int = 1):
    """A list of PIL images from ``[N, 3, H, W]`` in ``[0, 1]``."""
    from PIL import Image

    images = images_01.clamp(0, 1)
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def labelled_grid(
    rows: Sequence[tuple[str, torch.Tensor]],
    labels: Sequence[int],
    *,
    scale: int = GRID_SCALE,
    pad: int = GRID_PAD,
):
    """A PIL image: ``rows`` of (method name, images ``[N, 3, H, W]``), the class label of each
    column on top."""
    from PIL import Image, ImageDraw

    count = len(labels)
    height, width = rows[0][1].shape[2] * scale, rows[0][1].shape[3] * scale
    canvas = Image.new(
        "RGB",
        (LABEL_WIDTH + count * (width + pad) + pad, HEADER_HEIGHT + len(rows) * (height + pad)),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(canvas)
    for column, label in enumerate(labels):
        draw.text((LABEL_WIDTH + pad + column * (width + pad), 2), str(label), fill=TEXT)
    for r, (name, images) in enumerate(rows):
        if images.shape[0] != count:
            raise ValueError(f"row {name!r} has {images.shape[0]} images for {count} labels")
        top = HEADER_HEIGHT + r * (height + pad)
        draw.text((4, top + height // 2 - 6), name, fill=TEXT)
        for column, image in enumerate(to_pil(images, scale)):
            canvas.paste(image, (LABEL_WIDTH + pad + column * (width + pad), top))
    return canvas


def save_pngs(folder: str | Path, images_01: torch.Tensor, labels: Sequence[int]) -> None:
    """``folder/{i:04d}_class{label}.png`` for every image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(to_pil(images_01), labels, strict=True)):
        image.save(folder / f"{index:04d}_class{label}.png")
