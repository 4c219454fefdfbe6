"""Pieces shared by the tiny trainers: schedules, codebook upkeep, batches, saving."""

from __future__ import annotations

import math
import resource
import sys
from pathlib import Path

import torch
from torch import nn

from teachers.data import ImageSet, random_shift

SHIPPED_DTYPE = torch.float16  # shipped weights: half the bytes; loaders cast back to float32
RESTART_NOISE = 0.01  # relative noise on restarted codes, so two restarts never coincide


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
