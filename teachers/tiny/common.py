"""Pieces shared by the tiny trainers: training loops, schedules, codebook upkeep, batches,
saving."""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from teachers.data import ImageSet, random_shift
from teachers.tiny.presets import TrainSettings

SHIPPED_DTYPE = torch.float16  # shipped weights: half the bytes; loaders cast back to float32
RESTART_NOISE = 0.01  # relative noise on restarted codes, so two restarts never coincide
# The trainers seed torch with the run's seed plus offsets up to this (train_llamagen's decoder
# refit: seed + 3); torch takes seeds below 2**64, so a run's seed is at most MAX_SEED.
MAX_SEED_OFFSET = 3
MAX_SEED = 2**64 - 1 - MAX_SEED_OFFSET


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def sample_batch(
    data: ImageSet, batch_size: int, max_shift: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch (with replacement) of shifted images in ``[-1, 1]`` and their labels."""
    idx = torch.randint(0, len(data), (batch_size,), generator=generator)
    return random_shift(data.images[idx], max_shift, generator), data.labels[idx]


def augmented_copies(
    data: ImageSet, copies: int, max_shift: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set once unshifted plus ``copies - 1`` randomly shifted copies."""
    images = [data.images] + [
        random_shift(data.images, max_shift, generator) for _ in range(copies - 1)
    ]
    return torch.cat(images), data.labels.repeat(copies)


@torch.no_grad()
def restart_codes(
    codebook_VC: torch.Tensor,
    dead_V: torch.Tensor,
    pool_NC: torch.Tensor,
    generator: torch.Generator,
) -> int:
    """Replace the rows of dead codes by random vectors of ``pool_NC`` (encoder outputs or
    residuals), plus a little noise. With every code dead this is a data-driven init (a
    one-shot k-means++-free k-means init). Returns the number of codes restarted."""
    count = int(dead_V.sum())
    if count == 0 or pool_NC.shape[0] == 0:
        return 0
    picks = torch.randint(0, pool_NC.shape[0], (count,), generator=generator)
    chosen = pool_NC[picks].to(codebook_VC.dtype)
    scale = chosen.norm(dim=1, keepdim=True).mean()
    noise = torch.randn(chosen.shape, generator=generator) * RESTART_NOISE * scale
    codebook_VC[dead_V] = chosen + noise
    return count


def code_usage(indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1), minlength=vocab_size)


def perplexity(counts_V: torch.Tensor) -> float:
    """exp(entropy) of code usage: the effective number of codes in use."""
    p = counts_V.float() / counts_V.sum().clamp_min(1)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def save_weights(module: nn.Module, path: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Write ``module``'s state dict as safetensors in ``SHIPPED_DTYPE``; returns bytes."""
    from safetensors.torch import save_file

    state = {
        k: (v.to(SHIPPED_DTYPE) if v.is_floating_point() else v).contiguous()
        for k, v in module.state_dict().items()
        if k not in skip
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    path.chmod(0o644)  # shipped package data, readable by every user
    return path.stat().st_size


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def seeded_generator(seed: int) -> torch.Generator:
    """A generator seeded with ``seed``; torch's global RNG (module init) is seeded too."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return generator


def drop_labels(
    labels: torch.Tensor, null_class: int, prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Each label replaced by ``null_class`` with probability ``prob`` (CFG training), drawn
    from ``generator``: the models hold no RNG, so a training step is a function of its seed."""
    drop = torch.rand(labels.shape, generator=generator) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, steps, settings.warmup_steps)
    )


def optimise(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    clip: nn.Module | None = None,
) -> float:
    """One step on ``loss`` (gradient norm of ``clip``'s parameters clipped to 1); its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


def train_tokenizer(
    tokenizer: nn.Module,
    train: ImageSet,
    settings: TrainSettings,
    generator: torch.Generator,
    *,
    vocab_size: int,
    batch_loss: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float], torch.Tensor, Any]],
    restart_dead: Callable[[torch.Tensor, Any], int],
    desc: str,
    progress: bool = True,
) -> dict:
    """The tokenizer loop: ``batch_loss(images)`` gives (loss, parts with ``"rec"``, code
    indices, state); every ``dead_code_every`` steps but in the last quarter,
    ``restart_dead(unused codes [V], state of that step)`` restarts them. Ends frozen in eval
    mode; returns the record (losses, restarts)."""
    optimizer = torch.optim.AdamW(
        tokenizer.parameters(), lr=settings.tokenizer_lr, betas=(0.9, 0.99)
    )
    steps = settings.tokenizer_steps
    schedule = warmup_cosine_schedule(optimizer, settings, steps)
    window_counts = torch.zeros(vocab_size, dtype=torch.long)
    losses, restarts = [], 0
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        images, _ = sample_batch(
            train, settings.tokenizer_batch_size, settings.max_shift, generator
        )
        loss, parts, indices, state = batch_loss(images)
        losses.append(optimise(loss, optimizer, schedule))
        window_counts += code_usage(indices, vocab_size)
        if (step + 1) % settings.dead_code_every == 0:
            if step < steps * 3 // 4:  # let the codebook settle before the end
                restarts += restart_dead(window_counts == 0, state)
            bar.set_postfix(rec=f"{parts['rec']:.4f}", ppl=f"{perplexity(window_counts):.0f}")
            window_counts.zero_()
    tokenizer.eval().requires_grad_(False)
    return {"losses": losses, "code_restarts": restarts}


def token_cross_entropy(logits_BnV: torch.Tensor, tokens_Bn: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every token (mean over tokens)."""
    return F.cross_entropy(logits_BnV.reshape(-1, logits_BnV.shape[-1]), tokens_Bn.reshape(-1))


def train_ar_model(
    model: nn.Module,
    num_examples: int,
    settings: TrainSettings,
    generator: torch.Generator,
    *,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    heldout_loss: Callable[[], torch.Tensor] | None = None,
    no_decay_names: tuple[str, ...] = (),
    desc: str,
    progress: bool = True,
) -> dict:
    """The AR loop: ``batch_loss(indices of a random batch)`` minimised with AdamW (weight
    decay on matrices whose names contain none of ``no_decay_names``), warm-up + cosine and
    gradient clipping. Ends frozen in eval mode; returns the record (losses, and the
    ``heldout_loss()`` value as ``heldout_ce`` if given)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        wants_decay = p.dim() >= 2 and not any(s in name for s in no_decay_names)
        (decay if wants_decay else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.ar_weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.ar_lr,
        betas=(0.9, 0.95),
    )
    steps = settings.ar_steps
    schedule = warmup_cosine_schedule(optimizer, settings, steps)
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        idx = torch.randint(0, num_examples, (settings.ar_batch_size,), generator=generator)
        losses.append(optimise(batch_loss(idx), optimizer, schedule, clip=model))
        if len(losses) % 50 == 0:
            bar.set_postfix(ce=f"{sum(losses[-50:]) / 50:.3f}")
    model.eval().requires_grad_(False)
    record: dict = {"losses": losses}
    if heldout_loss is not None:
        with torch.no_grad():
            record["heldout_ce"] = heldout_loss().item()
    return record
