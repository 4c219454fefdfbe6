"""The domain evaluator of the embedded default: a small CNN trained on the digits train split.

Inception and LPIPS weights cannot be downloaded here, so this classifier stands in for both:

- ``frechet_distance``: FID in the classifier's penultimate feature space (64 dims), through
  torchmetrics' ``FrechetInceptionDistance(feature=<module>)``;
- ``class_accuracy``: how often the classifier recognises the intended class of a sample;
- ``feature_distance``: an LPIPS-like perceptual distance (unit-normalised activations of every
  stage, squared differences, averaged), differentiable in its inputs, for tiny DD recipes.

All functions take images ``[B, 3, 16, 16]`` in ``[0, 1]`` (what teachers decode to). The
shipped weights are ``teachers/weights/digits_classifier.safetensors`` (beside the tiny
teachers' weights, read through ``teachers.shipped``); the command that reproduces them is in
``teachers/weights/tiny.json`` and docs/embedded_default.md. Its trainer
(``teachers.tiny.train_classifier``) imports this module, never the reverse.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from teachers.checkpoint import load_strict, read_state_dict
from teachers.shipped import METADATA_FILE, WEIGHTS_DIR, check_entry_files, read_metadata

CLASSIFIER_FILE = "digits_classifier.safetensors"
CLASSIFIER_NAME = "digits-classifier"
NORM_GROUPS = 8
UNIT_NORM_EPS = 1e-10  # LPIPS' normalize_tensor epsilon
DEFAULT_EVAL_BATCH = 512


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = 10
    resolution: int = 16
    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64)  # one stage per width, each halves the resolution
    feature_dim: int = 64  # penultimate width: the FID feature space
    dropout: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.resolution % 2 ** len(self.widths):
            raise ValueError(f"resolution {self.resolution} not divisible by 2^{len(self.widths)}")

    @property
    def final_grid(self) -> int:
        return self.resolution // 2 ** len(self.widths)

    def to_dict(self) -> dict:
        return asdict(self)


class ConvStage(nn.Module):
    """conv3x3 - GroupNorm - GELU - conv3x3 - GroupNorm - GELU, then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(NORM_GROUPS, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(self.norm2(self.conv2(x)))


class DigitsClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        widths = (config.in_channels, *config.widths)
        self.stages = nn.ModuleList(
            ConvStage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.fc = nn.Linear(widths[-1] * config.final_grid**2, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def _check(self, images_01: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.resolution, c.resolution)
        if images_01.dim() != 4 or tuple(images_01.shape[1:]) != expected:
            raise ValueError(
                f"the classifier takes images [B, {c.in_channels}, {c.resolution}, {c.resolution}] "
                f"in [0, 1], got {tuple(images_01.shape)}"
            )

    def activations(self, images_01: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output (before pooling), then the penultimate features ``[B, D]``."""
        self._check(images_01)
        x = images_01.float() * 2 - 1
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
            x = F.avg_pool2d(x, 2)
        outputs.append(F.gelu(self.fc(x.flatten(1))))
        return outputs

    def features(self, images_01: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]``: the FID feature space of this domain."""
        return self.activations(images_01)[-1]

    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.head(self.dropout(self.features(images_01)))


class FIDFeatureExtractor(nn.Module):
    """What ``FrechetInceptionDistance(feature=...)`` needs from a custom module.

    torchmetrics passes the images to the module unchanged (``normalize`` only converts for its
    built-in Inception), reads ``num_features`` (or runs a 299x299 dummy image, which this
    network cannot take) and accumulates ``[B, num_features]`` outputs in float64. This wrapper
    takes float images in ``[0, 1]`` or uint8 images in ``[0, 255]``.
    """

    def __init__(self, classifier: DigitsClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.config.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return self.classifier.features(images)


def classifier_path() -> Path:
    return WEIGHTS_DIR / CLASSIFIER_FILE


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The shipped classifier, or the one at ``path`` (a weights file that ``dd train-teacher
    --family classifier --out DIR`` wrote), frozen, in eval mode. Its config is that of the
    entry of ``tiny.json`` beside the file that names it (a classifier of another data set has
    other classes: the shipped entry's config would not fit it)."""
    path = Path(path) if path is not None else classifier_path()
    metadata = read_metadata(path.parent)
    named = [
        (name, entry)
        for name, entry in metadata.items()
        if entry.get("family") == "classifier" and entry["files"]["classifier"] == path.name
    ]
    if not named:
        raise FileNotFoundError(
            f"no classifier entry for {path.name} in {path.parent / METADATA_FILE}: train it "
            "with `dd train-teacher --family classifier --out DIR`"
        )
    name, entry = named[0]
    check_entry_files(name, entry, path.parent)  # the file of another run under this entry
    model = DigitsClassifier(ClassifierConfig(**entry["configs"]["classifier"]))
    state = {k: v.float() for k, v in read_state_dict(path).items()}
    load_strict(model, state, source=str(path))
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def default_classifier() -> DigitsClassifier:
    """The shipped classifier, loaded once per process."""
    return load_classifier()


def _batches(images: torch.Tensor, batch_size: int):
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


@torch.no_grad()
def predict(
    images_01: torch.Tensor,
    classifier: DigitsClassifier | None = None,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> torch.Tensor:
    """Predicted classes ``[B]`` of images in ``[0, 1]``."""
    classifier = classifier or default_classifier()
    return torch.cat([classifier(b).argmax(dim=1) for b in _batches(images_01, batch_size)])


def check_unit_images(images: torch.Tensor, name: str) -> None:
    """The evaluators read float images in ``[0, 1]``: uint8 images were cast to floats up to
    255, ``[-1, 1]`` images read as darker ones (the Inception path clamped them) and NaN as
    black, each giving a wrong FID without an error."""
    if not images.dtype.is_floating_point:
        raise ValueError(f"{name} must be float images in [0, 1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):  # NaN passes both comparisons below
        raise ValueError(f"{name} hold NaN or infinite values (a diverged model?)")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"{name} must be in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]"
        )


def class_accuracy(
    images_01: torch.Tensor,
    labels: torch.Tensor,
    classifier: DigitsClassifier | None = None,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> float:
    """Fraction of images the classifier assigns to their intended ``labels``."""
    check_unit_images(images_01, "images")
    if images_01.shape[0] == 0:  # the mean of nothing: a bare torch.cat error before
        raise ValueError("no images to classify")
    if labels.shape != (images_01.shape[0],):
        raise ValueError(f"labels {tuple(labels.shape)} do not match {images_01.shape[0]} images")
    predicted = predict(images_01, classifier, batch_size=batch_size)
    return (predicted == labels.to(predicted.device)).float().mean().item()


@torch.no_grad()
def frechet_distance(
    generated_01: torch.Tensor,
    reference_01: torch.Tensor,
    classifier: DigitsClassifier | None = None,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> float:
    """FID between two image sets in the classifier's feature space (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    check_unit_images(generated_01, "generated")
    check_unit_images(reference_01, "reference")

    extractor = FIDFeatureExtractor(classifier or default_classifier())
    metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    for batch in _batches(reference_01, batch_size):
        metric.update(batch.float(), real=True)
    for batch in _batches(generated_01, batch_size):
        metric.update(batch.float(), real=False)
    return float(metric.compute())


def _unit_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit length over channels (dim 1), as LPIPS normalises each layer's activations."""
    return x / torch.sqrt(x.square().sum(dim=1, keepdim=True) + UNIT_NORM_EPS)


class DigitsPerceptual(nn.Module):
    """``feature_distance`` as the training loss' perceptual term: a frozen module holding its
    own classifier, so that Lightning moves it with the student (the per-process
    ``default_classifier`` stays where the evaluators use it). Its parameters are frozen parts
    of ``dd.distill.DistillModule``: left out of checkpoints, shared by the EMA's copy."""

    def __init__(self, classifier: DigitsClassifier | None = None) -> None:
        super().__init__()
        self.classifier = classifier if classifier is not None else load_classifier()
        self.classifier.eval().requires_grad_(False)

    def check_images_of(self, teacher) -> None:
        """Refuse a teacher whose images the classifier cannot read (an official teacher's
        256 px), before training: the first step failed. One dummy sample is decoded."""
        from teachers.protocol import decoded_image_shape

        shape = decoded_image_shape(teacher)
        config = self.classifier.config
        expected = (config.in_channels, config.resolution, config.resolution)
        if shape != expected:
            raise ValueError(
                f"loss.perceptual digits reads the digits classifier's {list(expected)} "
                f"images; this teacher decodes {list(shape)}: use lpips_vgg"
            )

    def train(self, mode: bool = True) -> DigitsPerceptual:
        """Always in eval mode: ``module.train()`` on the LightningModule would otherwise turn
        the classifier's dropout on inside the loss."""
        return super().train(False)

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        # float32 under bf16 autocast too, as LPIPSDistance: the loss is summed in float32 (in
        # bf16 the logged term sat on bf16's 1/32 grid near 4)
        return feature_distance(images_a, images_b, self.classifier).float()


def feature_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    classifier: DigitsClassifier | None = None,
) -> torch.Tensor:
    """LPIPS-like distance ``[B]`` between paired images in ``[0, 1]``, differentiable in both.

    For every conv stage and the penultimate features: channel-wise unit normalisation, squared
    difference, mean over positions, summed over channels; then summed over layers (LPIPS'
    "lin" layer replaced by uniform weights, which is LPIPS' own ``lpips=False`` variant).
    """
    if images_a.shape != images_b.shape:
        raise ValueError(f"image shapes differ: {tuple(images_a.shape)} vs {tuple(images_b.shape)}")
    # dtype only: a range check would sync the device at every training step (a uint8 pair
    # read as floats up to 255 gave a distance of 0)
    for images in (images_a, images_b):
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be float images in [0, 1], got dtype {images.dtype}")
    classifier = classifier or default_classifier()
    total = images_a.new_zeros(images_a.shape[0])
    for act_a, act_b in zip(
        classifier.activations(images_a), classifier.activations(images_b), strict=True
    ):
        if act_a.dim() == 2:  # penultimate features [B, D]: one "position"
            act_a, act_b = act_a[:, :, None, None], act_b[:, :, None, None]
        diff = (_unit_normalize(act_a) - _unit_normalize(act_b)).square()
        total = total + diff.sum(dim=1).flatten(1).mean(dim=1)
    return total
