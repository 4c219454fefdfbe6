"""Training a tiny FAR teacher: the continuous tokenizer, then FAR-Causal with its head.

- Autoencoder (``teachers.far.Autoencoder``): MSE + L1 reconstruction, the decoder fed latents
  with Gaussian noise of ``DECODER_LATENT_NOISE`` times each channel's batch standard
  deviation (so it tolerates a generator's small errors); afterwards the channels are
  standardised with the training set's statistics (the token space).
- FAR-Causal (``teachers.far.FARCausal``): teacher-forced conditions ``z_i`` for every token,
  each used ``head_batch_mul`` times; the shortcut head learns flow matching plus
  self-consistency against its EMA (``teachers.far.shortcut.shortcut_loss``), the flow head flow
  matching only. AdamW, warm-up + cosine, gradient clipping at 1; no weight decay on the head,
  biases and norms (FAR Sec. 4.1). Labels dropped to the null class with
  ``class_dropout_prob`` (CFG). The EMA model is what ships (FAR samples with its EMA).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from tqdm import tqdm

from teachers.data import ImageSet
from teachers.far.autoencoder import Autoencoder
from teachers.far.config import AutoencoderConfig, FARConfig, ShortcutSettings
from teachers.far.model import FARCausal
from teachers.far.shortcut import flow_matching_loss, shortcut_loss
from teachers.tiny.common import (
    augmented_copies,
    drop_labels,
    optimise,
    sample_batch,
    seeded_generator,
    warmup_cosine_schedule,
)
from teachers.tiny.presets import TrainSettings
from teachers.tiny.resume import NO_PROGRESS

DECODER_LATENT_NOISE = 0.1  # relative to each latent channel's batch std
ENCODE_BATCH = 512
EMA_WARMUP = 10  # EMA decay min(ema_decay, (1 + k) / (EMA_WARMUP + k)) at step k
LOG_EVERY = 50
HELDOUT_SEED = 12345  # fixed noise and times for the held-out flow-matching loss


def far_settings_record(settings: TrainSettings, shortcut: ShortcutSettings) -> dict:
    """FAR's settings as its entry records them: not those of the VQ tokenizers or LlamaGen's
    decoder refit (``TrainSettings.record``), plus the decoder noise and the shortcut's."""
    record = settings.record("far")
    record["decoder_latent_noise"] = DECODER_LATENT_NOISE
    record["shortcut"] = shortcut.to_dict()
    return record


def autoencoder_loss(
    autoencoder: Autoencoder, images: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    latents = autoencoder.encode_latents(images)
    scale = latents.detach().std(dim=(0, 2, 3), keepdim=True)
    noise = torch.randn(latents.shape, generator=generator) * DECODER_LATENT_NOISE * scale
    recon = autoencoder.decode_latents(latents + noise)
    return F.mse_loss(recon, images) + F.l1_loss(recon, images)


@torch.no_grad()
def set_latent_statistics(autoencoder: Autoencoder, images: torch.Tensor) -> None:
    """Standardise the token space with the mean and std of every channel over ``images``."""
    latents = torch.cat([autoencoder.encode_latents(b) for b in images.split(ENCODE_BATCH)])
    autoencoder.latent_mean.copy_(latents.mean(dim=(0, 2, 3)))
    autoencoder.latent_std.copy_(latents.std(dim=(0, 2, 3)))


def train_autoencoder(
    train: ImageSet, config: AutoencoderConfig, settings: TrainSettings, *, progress: bool = True
) -> tuple[Autoencoder, dict]:
    generator = seeded_generator(settings.seed)
    autoencoder = Autoencoder(config).train()
    optimizer = torch.optim.AdamW(
        autoencoder.parameters(), lr=settings.tokenizer_lr, betas=(0.9, 0.99)
    )
    schedule = warmup_cosine_schedule(optimizer, settings, settings.tokenizer_steps)
    losses = []
    bar = tqdm(range(settings.tokenizer_steps), desc="far autoencoder", disable=not progress)
    for _ in bar:
        images, _ = sample_batch(
            train, settings.tokenizer_batch_size, settings.max_shift, generator
        )
        losses.append(
            optimise(autoencoder_loss(autoencoder, images, generator), optimizer, schedule)
        )
        if len(losses) % LOG_EVERY == 0:
            bar.set_postfix(rec=f"{sum(losses[-LOG_EVERY:]) / LOG_EVERY:.4f}")
    autoencoder.eval().requires_grad_(False)
    set_latent_statistics(autoencoder, train.images)
    return autoencoder, {"losses": losses}


@torch.no_grad()
def encode_tokens(autoencoder: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Tokens ``[N, n, C]`` of images in ``[-1, 1]``."""
    return torch.cat([autoencoder.encode(b) for b in images.split(ENCODE_BATCH)])


def head_rows(
    z_BnD: torch.Tensor, tokens_BnC: torch.Tensor, head_batch_mul: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (token, condition) pair repeated ``head_batch_mul`` times: ``[N, C]``, ``[N, D]``."""
    tokens_NC = tokens_BnC.reshape(-1, tokens_BnC.shape[-1]).repeat(head_batch_mul, 1)
    z_ND = z_BnD.reshape(-1, z_BnD.shape[-1]).repeat(head_batch_mul, 1)
    return tokens_NC, z_ND


def far_loss(
    model: FARCausal,
    ema: FARCausal,
    labels: torch.Tensor,
    tokens_BnC: torch.Tensor,
    shortcut: ShortcutSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The head's loss on teacher-forced conditions (shortcut or flow matching by head kind)."""
    z_BnD = model.features(labels, tokens_BnC)
    tokens_NC, z_ND = head_rows(z_BnD, tokens_BnC, shortcut.head_batch_mul)
    if model.config.head_kind == "shortcut":
        return shortcut_loss(model.head, ema.head, tokens_NC, z_ND, shortcut, generator)
    loss = flow_matching_loss(model.head, tokens_NC, z_ND, generator)
    return loss, {"flow": loss.item()}


@torch.no_grad()
def update_ema(ema: FARCausal, model: FARCausal, step: int, decay: float) -> None:
    rate = min(decay, (1 + step) / (EMA_WARMUP + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - rate)


@torch.no_grad()
def heldout_flow_loss(model: FARCausal, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Flow-matching loss (``d = 0``) on held-out tokens with fixed noise and times."""
    generator = torch.Generator().manual_seed(HELDOUT_SEED)
    z_BnD = model.features(labels, tokens)
    tokens_NC, z_ND = head_rows(z_BnD, tokens, 1)
    return flow_matching_loss(model.head, tokens_NC, z_ND, generator).item()


def train_far_model(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    config: FARConfig,
    settings: TrainSettings,
    shortcut: ShortcutSettings,
    *,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
) -> tuple[FARCausal, dict]:
    """FAR-Causal trained on ``tokens [N, n, C]`` with ``labels [N]``; returns the EMA model
    (frozen, eval mode) and the record (losses per step, parts, held-out loss)."""
    generator = seeded_generator(settings.seed + 1)
    model = FARCausal(config).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        wants_decay = p.dim() >= 2 and not name.startswith("head.")
        (decay if wants_decay else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.ar_weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.ar_lr,
        betas=(0.9, 0.95),
    )
    schedule = warmup_cosine_schedule(optimizer, settings, settings.ar_steps)
    losses: list[float] = []
    consistency: list[float] = []
    bar = tqdm(range(settings.ar_steps), desc=f"far {config.head_kind}", disable=not progress)
    for step in bar:
        idx = torch.randint(0, tokens.shape[0], (settings.ar_batch_size,), generator=generator)
        batch_labels = drop_labels(
            labels[idx], config.num_classes, config.class_dropout_prob, generator
        )
        loss, parts = far_loss(model, ema, batch_labels, tokens[idx], shortcut, generator)
        losses.append(optimise(loss, optimizer, schedule, clip=model))
        if "consistency" in parts:
            consistency.append(parts["consistency"])
        update_ema(ema, model, step, shortcut.ema_decay)
        if len(losses) % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{sum(losses[-LOG_EVERY:]) / LOG_EVERY:.4f}")
    ema.eval().requires_grad_(False)
    record: dict = {"losses": losses}
    if consistency:
        tail = consistency[-LOG_EVERY:]
        record["final_consistency_loss"] = sum(tail) / len(tail)
    if heldout is not None:
        record["heldout_flow_loss"] = heldout_flow_loss(ema, *heldout)
    return ema, record


def train_far(
    train: ImageSet,
    far_config: FARConfig,
    autoencoder_config: AutoencoderConfig,
    settings: TrainSettings,
    shortcut: ShortcutSettings,
    *,
    heldout: ImageSet | None = None,
    progress: bool = True,
    stages=NO_PROGRESS,
) -> tuple[FARCausal, Autoencoder, dict]:
    """Tokenizer, then FAR-Causal on the tokens of ``token_copies`` shifted copies;
    ``stages`` (a ``RunProgress``) keeps each trained stage and gives it back on a rerun."""
    autoencoder, ae_record = stages.run(
        "1-tokenizer",
        lambda: train_autoencoder(train, autoencoder_config, settings, progress=progress),
        lambda: Autoencoder(autoencoder_config),
    )
    generator = torch.Generator().manual_seed(settings.seed + 2)
    images, labels = augmented_copies(train, settings.token_copies, settings.max_shift, generator)
    tokens = encode_tokens(autoencoder, images)
    with torch.no_grad():
        recon = autoencoder.decode(tokens[: len(train)])
        ae_record["train_recon_mse"] = F.mse_loss(recon, train.images).item()
    held = None
    if heldout is not None:
        held = (encode_tokens(autoencoder, heldout.images), heldout.labels)
        with torch.no_grad():
            ae_record["heldout_recon_mse"] = F.mse_loss(
                autoencoder.decode(held[0]), heldout.images
            ).item()
    model, far_record = stages.run(
        "2-ar",
        lambda: train_far_model(
            tokens, labels, far_config, settings, shortcut, heldout=held, progress=progress
        ),
        lambda: FARCausal(far_config),
    )
    return model, autoencoder, {"tokenizer": ae_record, "ar": far_record}
