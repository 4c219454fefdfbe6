"""Small image data sets for tiny teachers: scikit-learn's bundled digits, or a class folder.

Both return an :class:`ImageSet`: images ``[N, 3, R, R]`` float32 in ``[-1, 1]`` (what the
tokenizers read), integer labels ``[N]`` and the class names. Nothing is downloaded.

- ``load_digits_split("train" | "heldout" | "all")``: the 1,797 8x8 digits of
  ``sklearn.datasets.load_digits`` (grey levels 0..16), up-sampled bilinearly to 16x16 and
  repeated over 3 channels; a fixed, stratified, seeded train / held-out split.
- ``load_image_folder(root)``: a user's own small data set laid out as
  ``root/<class name>/<image file>`` (one sub-folder per class, sorted names = class order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_RESOLUTION = 16  # 2x the native 8x8: room for 8x8 token grids after one down-sampling
DIGITS_MAX_GREY = 16.0  # load_digits grey levels are integers 0..16
DIGITS_HELDOUT_PER_CLASS = 36  # 360 held-out images (20%), 1,437 for training
DIGITS_SPLIT_SEED = 0
# The data name of the digits set in tiny.json entries (a --data-dir set: its folder name)
DIGITS_DATA_NAME = "digits"
DIGITS_NUM_CLASSES = 10
SPLIT_FILE = Path(__file__).resolve().parent / "weights" / "digits_heldout.json"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class ImageSet:
    """``images [N, 3, R, R]`` in ``[-1, 1]``, ``labels [N]`` (int64), ``class_names[label]``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels {tuple(self.labels.shape)} do not match {self.images.shape[0]} images"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def images_01(self) -> torch.Tensor:
        """The images in ``[0, 1]`` (what teachers' decoders and the evaluator use)."""
        return (self.images + 1) / 2


def to_minus1_1(images_01: torch.Tensor) -> torch.Tensor:
    return images_01 * 2 - 1


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def digits_split_indices(seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices into ``load_digits()``: ``DIGITS_HELDOUT_PER_CLASS`` per class
    held out, chosen by a seeded permutation; both sorted. The default seed's held-out indices
    are read from ``SPLIT_FILE``, the split every shipped model was trained and measured on:
    NumPy promises its random streams only per build, and another split would put training
    images into the held-out set."""
    _, targets = _digits_arrays()
    if seed == DIGITS_SPLIT_SEED:
        stored = json.loads(SPLIT_FILE.read_text())
        heldout_idx = np.array(stored["heldout"], dtype=np.int64)
        return np.setdiff1d(np.arange(len(targets)), heldout_idx), heldout_idx
    return draw_split_indices(seed)


def draw_split_indices(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The split of ``seed`` drawn with this NumPy (``SPLIT_FILE`` holds seed 0's as drawn when
    the tiny teachers were trained)."""
    _, targets = _digits_arrays()
    rng = np.random.default_rng(seed)
    heldout = []
    for label in range(DIGITS_NUM_CLASSES):
        members = np.flatnonzero(targets == label)
        heldout.append(rng.permutation(members)[:DIGITS_HELDOUT_PER_CLASS])
    heldout_idx = np.sort(np.concatenate(heldout))
    train_idx = np.setdiff1d(np.arange(len(targets)), heldout_idx)
    return train_idx, heldout_idx


def load_digits_split(
    split: str = "train", *, resolution: int = DIGITS_RESOLUTION, seed: int = DIGITS_SPLIT_SEED
) -> ImageSet:
    """The bundled digits as an :class:`ImageSet`; ``split``: ``train``, ``heldout`` or ``all``."""
    images, targets = _digits_arrays()
    if split == "all":
        idx = np.arange(len(targets))
    elif split in ("train", "heldout"):
        idx = digits_split_indices(seed)[0 if split == "train" else 1]
    else:
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    grey_N1hw = torch.from_numpy(images[idx] / DIGITS_MAX_GREY).unsqueeze(1)
    if resolution != grey_N1hw.shape[-1]:
        grey_N1hw = F.interpolate(
            grey_N1hw, size=(resolution, resolution), mode="bilinear", align_corners=False
        )
    images_N3HW = to_minus1_1(grey_N1hw.clamp(0, 1)).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(
        images_N3HW,
        torch.from_numpy(targets[idx]),
        tuple(str(d) for d in range(DIGITS_NUM_CLASSES)),
    )


def load_image_folder(root: str | Path, *, resolution: int = DIGITS_RESOLUTION) -> ImageSet:
    """A class-folder data set ``root/<class>/<image>`` as an :class:`ImageSet`.

    Images are converted to RGB and resized (bicubic) to ``resolution x resolution``. Class
    indices follow the sorted sub-folder names. Hidden entries and files without an image
    extension are skipped; raises ``FileNotFoundError`` for a missing folder and ``ValueError``
    for an empty folder, a folder without class sub-folders, a class sub-folder without
    images, or an image that cannot be read (the file is named).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    entries = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
    if not entries:
        raise ValueError(f"image folder {root} is empty: expected {root}/<class name>/<images>")
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        raise ValueError(
            f"image folder {root} has no class sub-folders (found {len(entries)} files): "
            f"expected one sub-folder per class, {root}/<class name>/<images>"
        )
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = [
            p
            for p in sorted(class_dir.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not files:
            raise ValueError(
                f"class sub-folder {class_dir} has no images "
                f"(extensions {sorted(IMAGE_EXTENSIONS)})"
            )
        for path in files:
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize(
                        (resolution, resolution), Image.Resampling.BICUBIC
                    )
                    array = np.asarray(rgb, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError, ValueError) as error:
                raise ValueError(f"cannot read image {path}: {error}") from error
            images.append(torch.from_numpy(array).permute(2, 0, 1))
            labels.append(label)
    return ImageSet(
        to_minus1_1(torch.stack(images)),
        torch.tensor(labels, dtype=torch.long),
        tuple(p.name for p in class_dirs),
    )


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate every image by an independent integer offset in ``[-max_shift, max_shift]``
    (both axes), filling with the background value ``-1``: the trainers' only augmentation."""
    if max_shift <= 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + height, dx : dx + width]
    return out
