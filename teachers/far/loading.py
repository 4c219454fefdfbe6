"""Loading FAR weights (safetensors or weights-only torch files) strictly."""

from __future__ import annotations

from pathlib import Path

import torch

from teachers.checkpoint import load_strict, read_state_dict
from teachers.far.autoencoder import Autoencoder
from teachers.far.config import AutoencoderConfig, FARConfig
from teachers.far.model import FARCausal
from teachers.far.teacher import FARTeacher


def _load(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    state = {k: v.float() for k, v in read_state_dict(path).items()}
    load_strict(module, state, source=str(path))
    return module


def load_far_teacher(
    model_path: str | Path,
    autoencoder_path: str | Path,
    *,
    far_config: FARConfig,
    autoencoder_config: AutoencoderConfig,
    device: torch.device | str = "cpu",
) -> FARTeacher:
    """The frozen ``FARTeacher`` of two weight files (float32 whatever the file's dtype)."""
    model = _load(FARCausal(far_config), Path(model_path))
    autoencoder = _load(Autoencoder(autoencoder_config), Path(autoencoder_path))
    return FARTeacher(model, autoencoder).to(device)
