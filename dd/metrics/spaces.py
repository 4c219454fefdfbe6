"""Feature spaces the metrics of ``dd.metrics.generative`` are computed in.

- ``InceptionSpace`` (real teachers): torch-fidelity's ``FeatureExtractorInceptionV3``, the
  network torchmetrics' FID and IS wrap (``NoTrainInceptionV3``; TF Inception 2015-12-05, as
  pytorch-fid and the ADM suite): 2048-d pool features for FID and precision/recall, 1008-way
  ``logits_unbiased`` for IS, in one pass (torchmetrics' wrapper returns only the first).
  Its weights are read from a LOCAL file (``INCEPTION_WEIGHTS_FILE``; first checked with
  ``torch.load(weights_only=True)``): without it, a ``FileNotFoundError`` says which file and
  where to put it. Nothing is downloaded.
- ``DigitsSpace`` (tiny teachers): the shipped digits classifier (``dd.metrics.digits``):
  64-d penultimate features, its 10 class logits (IS, and class accuracy since its classes
  are the teachers' labels).

``embed(images [B, 3, H, W] in [0, 1]) -> (features [B, D], logits [B, K])``.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import torch

from dd.metrics.digits import check_unit_images

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (  # torch-fidelity's release (download it where there is internet)
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "distilled-decoding"
INCEPTION_FEATURES = "2048"
INCEPTION_LOGITS = "logits_unbiased"
EMBED_BATCH = 200


class FeatureSpace(Protocol):
    name: str
    labels_are_classes: bool  # whether logit k is the teachers' class k (class accuracy)

    def embed(self, images_01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _in_batches(fn, images_01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features, logits = [], []
    with torch.no_grad():
        for batch in images_01.split(EMBED_BATCH):
            f, lo = fn(batch)
            features.append(f.double().cpu())
            logits.append(lo.double().cpu())
    return torch.cat(features), torch.cat(logits)


def embed_stream(
    space: FeatureSpace, batches: Iterable[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``space.embed`` of the concatenated ``batches`` without holding them all (50,000
    ImageNet-size images are 39 GB of float32): re-cut into ``EMBED_BATCH`` rows, as ``embed``
    cuts one tensor, so the features are exactly those of embedding the concatenation."""
    features, logits, pending = [], [], []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.shape[0]
        if held < EMBED_BATCH:
            continue
        joined = torch.cat(pending)  # once per batch: every whole chunk of it, then the rest
        whole = held - held % EMBED_BATCH
        for start in range(0, whole, EMBED_BATCH):
            part_features, part_logits = space.embed(joined[start : start + EMBED_BATCH])
            features.append(part_features)
            logits.append(part_logits)
        pending, held = [joined[whole:]], held - whole
    if held:
        part_features, part_logits = space.embed(torch.cat(pending))
        features.append(part_features)
        logits.append(part_logits)
    if not features:
        raise ValueError("no images to embed")
    return torch.cat(features), torch.cat(logits)


class DigitsSpace:
    name = "digits classifier (64-d features, 10 classes)"
    labels_are_classes = True

    def __init__(self) -> None:
        from dd.metrics.digits import default_classifier

        self.classifier = default_classifier()

    def _one(self, images_01: torch.Tensor):
        # as InceptionSpace's: [-1, 1] or uint8 images scored a wrong FID without a word, NaN
        # failed in the FID's eigenvalues without saying it was the images
        check_unit_images(images_01, "images")
        features = self.classifier.features(images_01.float().cpu())
        return features, self.classifier.head(features)

    def embed(self, images_01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _in_batches(self._one, images_01)


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The local Inception weights file (``path``, else ``DEFAULT_WEIGHTS_DIR``); a clear
    ``FileNotFoundError`` naming the file and where to put it when it is absent."""
    resolved = Path(path) if path is not None else DEFAULT_WEIGHTS_DIR / INCEPTION_WEIGHTS_FILE
    if resolved.is_dir():
        resolved = resolved / INCEPTION_WEIGHTS_FILE
    if not resolved.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {resolved}. FID/IS/precision/recall of real "
            f"teachers need torch-fidelity's InceptionV3 file {INCEPTION_WEIGHTS_FILE} (from "
            f"{INCEPTION_WEIGHTS_URL}); this project never downloads it. Put it at "
            f"{DEFAULT_WEIGHTS_DIR / INCEPTION_WEIGHTS_FILE} or pass its path "
            "(dd eval --inception_weights PATH)."
        )
    return resolved


class InceptionSpace:
    name = "InceptionV3 (torch-fidelity, 2048-d pool features, 1008 logits)"
    labels_are_classes = False
    feature_dim = 2048

    def __init__(self, weights: str | Path | None = None, device: str = "cpu") -> None:
        path = inception_weights_path(weights)
        # Checked as plain tensors first (weights_only=True): torch-fidelity itself then reads
        # the same file, and must never unpickle anything else. A wrong file (an HTML page, a
        # truncated download, another network) is a ValueError naming the file it should be:
        # torch's own messages suggested weights_only=False, or listed kilobytes of keys.
        wrong = (
            f"{path} is not torch-fidelity's InceptionV3 weights file {INCEPTION_WEIGHTS_FILE} "
            f"(from {INCEPTION_WEIGHTS_URL})"
        )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling refused, truncated archive, not a torch file
            raise ValueError(f"{wrong}: {type(error).__name__} when loading it") from error
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"{wrong}: not a state dict of tensors")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            network = FeatureExtractorInceptionV3(
                name="inception-v3-compat",
                features_list=[INCEPTION_FEATURES, INCEPTION_LOGITS],
                feature_extractor_weights_path=str(path),
            )
        except RuntimeError as error:  # load_state_dict: missing or unexpected keys, shapes
            raise ValueError(f"{wrong}: its tensors do not fit InceptionV3") from error
        self.network = network.eval().to(device)
        self.device = device

    def _one(self, images_01: torch.Tensor):
        check_unit_images(images_01, "images")  # clamping hid [-1, 1] images; NaN became black
        uint8 = (images_01 * 255).round().to(torch.uint8).to(self.device)
        features, logits = self.network(uint8)
        return features, logits

    def embed(self, images_01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _in_batches(self._one, images_01)


def image_folder_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    """The PNG/JPEG files of ``folder``, sorted by name (the first ``limit``)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no .png/.jpg images in {folder}")
    return files[:limit] if limit else files


def iter_image_folder(
    folder: str | Path, limit: int | None = None, batch_size: int = EMBED_BATCH
) -> Iterator[torch.Tensor]:
    """Images ``[b, 3, H, W]`` in ``[0, 1]`` of a folder (``image_folder_files``), batch by
    batch (``embed_stream``): a whole folder of 50,000 ImageNet-size images held as float32
    is 39 GB. Converted to RGB (grey and alpha images too); every image must have the first
    one's size (an error names the file that does not)."""
    import numpy as np
    from PIL import Image

    size = None
    files = image_folder_files(folder, limit)
    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start : start + batch_size]:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            if size is None:
                size = array.shape
            if array.shape != size:
                raise ValueError(
                    f"{path} is {array.shape[1]}x{array.shape[0]} but {files[0].name} is "
                    f"{size[1]}x{size[0]}: a reference folder holds images of one size"
                )
            arrays.append(array)
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def resize_for_scoring(images_01: torch.Tensor, image_size: int) -> torch.Tensor:
    """Generated images ``[B, 3, H, W]`` in ``[0, 1]`` resized to ``image_size`` square, as
    LlamaGen's official FID sampler resizes its 384 px samples to 256 px
    (``autoregressive/sample/sample_c2i_ddp.py``, ``--image-size-eval``): bicubic
    ``F.interpolate`` with torch's defaults (``align_corners=False``, no antialiasing), only
    when the size differs, on float images, before clamping and before the uint8 quantisation.

    What differs, as far as a float pipeline through ``Teacher.decode_tokens`` allows:
    - the official sampler resizes the decoder's UNclamped ``[-1, 1]`` output and clamps after;
      ``decode_tokens`` has already clamped to ``[0, 1]``, so a pixel where the decoder
      overshoots enters the bicubic kernel at the clamp's value. The result is clamped again
      (bicubic overshoots near edges), as the official clamp does;
    - it interpolates on the ``[-1, 1]`` scale, here on ``[0, 1]``: an affine map, and bicubic
      weights sum to one, so the same up to float rounding;
    - it quantises with ``uint8(clamp(127.5 x + 128))``, i.e. ``floor(255 u + 0.5)`` for
      ``u = (x + 1) / 2``; ``InceptionSpace`` rounds ``255 u`` half to even: only exact ties
      differ."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if tuple(images_01.shape[-2:]) == (image_size, image_size):
        return images_01  # the official sampler resizes only when the sizes differ
    resized = torch.nn.functional.interpolate(
        images_01,
        size=(image_size, image_size),
        mode="bicubic",
        align_corners=False,
        antialias=False,
    )
    return resized.clamp(0, 1)


def image_folder_size(folder: str | Path) -> tuple[int, int]:
    """``(height, width)`` of a reference folder's images: its first file's (by name; the
    folder's other files are checked against it as they are read, ``iter_image_folder``)."""
    from PIL import Image

    with Image.open(image_folder_files(folder)[0]) as image:
        width, height = image.size
    return height, width


ADM_IMAGES_MEMBER = "arr_0.npy"


class NpzImages:
    """The ``arr_0`` images ``[N, H, W, 3]`` uint8 of an ADM reference batch ``.npz``, read
    from the archive: the array's header when opened (its shape and type, checked before any
    image is read, so a reference of the wrong size is refused at once), its rows batch by
    batch when embedded (10,000 ImageNet 256 px images are 2 GB; ``np.load`` read them whole).
    Plain or compressed archives (``np.savez``, ``np.savez_compressed``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._member() as member:
            self.shape = _uint8_images_header(member, self.path)

    @staticmethod
    def holds_images(path: str | Path) -> bool:
        with zipfile.ZipFile(path) as archive:
            return ADM_IMAGES_MEMBER in archive.namelist()

    @contextlib.contextmanager
    def _member(self) -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(self.path) as archive, archive.open(ADM_IMAGES_MEMBER) as member:
            yield member

    def batches(self, batch_size: int = EMBED_BATCH) -> Iterator[torch.Tensor]:
        """``[b, 3, H, W]`` floats in ``[0, 1]`` (``embed_stream``'s batches)."""
        count, height, width, _ = self.shape
        row_bytes = height * width * 3
        with self._member() as member:
            _uint8_images_header(member, self.path)  # reads up to the data
            for start in range(0, count, batch_size):
                rows = min(batch_size, count - start)
                data = member.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise ValueError(f"{self.path}: arr_0 ends after {start} of {count} images")
                batch = np.frombuffer(data, np.uint8).reshape(rows, height, width, 3)
                yield torch.from_numpy(batch.copy()).permute(0, 3, 1, 2).float() / 255


def _uint8_images_header(member: IO[bytes], path: Path) -> tuple[int, ...]:
    """The shape of an ``.npy`` stream holding ``[N, H, W, 3]`` uint8 in C order, read up to
    its data; a clear error for anything else."""
    version = np.lib.format.read_magic(member)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ValueError(f"{path}: arr_0 is an .npy of format {version}, not 1.0 or 2.0")
    shape, fortran_order, dtype = readers[version](member)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran_order:
        raise ValueError(
            f"{path}: arr_0 must be uint8 images [N, H, W, 3] (an ADM reference batch), got "
            f"{dtype} {shape}{' in Fortran order' if fortran_order else ''}"
        )
    return shape
