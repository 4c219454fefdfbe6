"""Training the digits classifier that serves as the domain evaluator (dd/metrics/digits.py)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dd.metrics.digits import ClassifierConfig, DigitsClassifier
from teachers.data import ImageSet
from teachers.tiny.common import sample_batch, warmup_cosine

log = logging.getLogger(__name__)

CLASSIFIER_STEPS = 1500
CLASSIFIER_BATCH = 128
CLASSIFIER_LR = 2e-3
CLASSIFIER_WEIGHT_DECAY = 0.05
CLASSIFIER_WARMUP = 50
CLASSIFIER_MAX_SHIFT = 1
# Generated samples are never exactly on the data manifold: noise and contrast jitter during
# training keep the classifier's features smooth around it.
PIXEL_NOISE_STD = 0.05


def train_classifier(
    train: ImageSet,
    *,
    steps: int = CLASSIFIER_STEPS,
    batch_size: int = CLASSIFIER_BATCH,
    seed: int = 0,
    config: ClassifierConfig | None = None,
    progress: bool = True,
) -> tuple[DigitsClassifier, list[float]]:
    """A classifier trained on ``train`` (images in ``[-1, 1]``); returns it (eval) and losses."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = config or ClassifierConfig(num_classes=train.num_classes, resolution=train.resolution)
    model = DigitsClassifier(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=CLASSIFIER_LR, weight_decay=CLASSIFIER_WEIGHT_DECAY
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, steps, CLASSIFIER_WARMUP)
    )
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        images, labels = sample_batch(train, batch_size, CLASSIFIER_MAX_SHIFT, generator)
        images_01 = (images + 1) / 2
        contrast = 0.7 + 0.3 * torch.rand(images.shape[0], 1, 1, 1, generator=generator)
        noise = PIXEL_NOISE_STD * torch.randn(images.shape, generator=generator)
        images_01 = (images_01 * contrast + noise).clamp(0, 1)
        loss = F.cross_entropy(model(images_01), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval().requires_grad_(False), losses
