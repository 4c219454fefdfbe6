"""``FARTeacher``: FAR-Causal and its autoencoder behind
``teachers.protocol.ContinuousTeacher``.

A frozen ``nn.Module`` in eval mode (``teachers.frozen.FrozenTeacher``). There is no codebook:
tokens are continuous ``[B, n, C]`` and the head's deterministic sampler given its noise is the
noise -> token map (``start(...).next_tokens(noise)``; ``teachers.far.sampling.map_noise``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from teachers.far.autoencoder import Autoencoder
from teachers.far.model import FARCausal
from teachers.far.sampling import DEFAULT_FAR_SAMPLING, sample_head
from teachers.far.session import FARSession
from teachers.far.student import FARStudentBackbone
from teachers.frozen import FrozenTeacher
from teachers.protocol import (
    ContinuousSamplingConfig,
    TokenGeometry,
    check_continuous_tokens,
    clamp_straight_through,
)


class FARTeacher(FrozenTeacher):
    family = "far"

    def __init__(self, model: FARCausal, autoencoder: Autoencoder):
        super().__init__()
        mc, ac = model.config, autoencoder.config
        if (mc.token_dim, mc.grid_size) != (ac.token_dim, ac.grid_size):
            raise ValueError(
                f"FAR tokens (dim {mc.token_dim}, grid {mc.grid_size}) do not match the "
                f"autoencoder's (dim {ac.token_dim}, grid {ac.grid_size})"
            )
        self.model, self.autoencoder = model, autoencoder
        self.geometry = TokenGeometry.raster(mc.grid_size, mc.grid_size)
        self.num_classes = mc.num_classes
        self.freeze()

    @property
    def token_dim(self) -> int:
        return self.model.config.token_dim

    @property
    def code_dim(self) -> int:  # FrozenTeacher.prepare_embeddings checks [B, n, code_dim]
        return self.token_dim

    @property
    def image_size(self) -> int:
        return self.autoencoder.config.resolution

    def default_sampling(self) -> ContinuousSamplingConfig:
        return DEFAULT_FAR_SAMPLING

    def student_backbone(self) -> FARStudentBackbone:
        """The DD student's trainable backbone (embedding head only; ``teachers.far.student``)."""
        return FARStudentBackbone(self.model).to(self.device)

    def checked_sampling(
        self, sampling: ContinuousSamplingConfig | None
    ) -> ContinuousSamplingConfig:
        """``sampling`` (``None``: ``default_sampling()``), a ``ValueError`` unless it is a
        ``ContinuousSamplingConfig`` (a codebook ``SamplingConfig`` has no ``head_steps``)."""
        sampling = self.default_sampling() if sampling is None else sampling
        if not isinstance(sampling, ContinuousSamplingConfig):
            raise ValueError(
                f"sampling must be a ContinuousSamplingConfig or None, got {sampling!r:.80}"
            )
        return sampling

    def start(
        self, labels: torch.Tensor, sampling: ContinuousSamplingConfig | None = None
    ) -> FARSession:
        """Open a session for ``labels [B]`` (``None`` = ``default_sampling()``)."""
        sampling = self.checked_sampling(sampling)
        return FARSession(self.model, self.prepare_labels(labels), sampling)

    def fingerprint_parts(self) -> tuple[Mapping[str, object], Sequence[tuple[str, nn.Module]]]:
        configs = {"model": self.model.config, "autoencoder": self.autoencoder.config}
        return configs, (("model.", self.model), ("autoencoder.", self.autoencoder))

    def prepare_continuous(self, tokens: torch.Tensor, name: str = "tokens") -> torch.Tensor:
        n = self.geometry.num_tokens
        check_continuous_tokens(tokens, self.token_dim, length=n, name=name)
        return tokens.to(self.device, torch.float32)

    @torch.no_grad()
    def map_noise_teacher_forcing(
        self,
        labels: torch.Tensor,
        tokens: torch.Tensor,
        noise: torch.Tensor,
        sampling: ContinuousSamplingConfig | None = None,
        *,
        start: int = 0,
    ) -> torch.Tensor:
        """The head map of ``noise`` at positions ``start..n-1`` given the earlier ``tokens`` (one
        pass of the trunk over the sequence; the head runs on those positions only)."""
        sampling = self.checked_sampling(sampling)
        labels = self.prepare_labels(labels)
        tokens = self.prepare_continuous(tokens)
        noise = self.prepare_continuous(noise, "noise")
        if noise.shape[0] != tokens.shape[0] or labels.shape[0] != tokens.shape[0]:
            raise ValueError("labels, tokens and noise must have the same batch size")
        b, n, c = tokens.shape
        if not 0 <= start < n:
            raise ValueError(f"start must be in [0, {n}), got {start}")
        rows = b * (n - start)
        z_BnD = self.model.features(labels, tokens)[:, start:]
        z_uncond = None
        if sampling.uses_cfg:
            null = torch.full_like(labels, self.null_class)
            z_uncond = self.model.features(null, tokens)[:, start:].reshape(rows, -1)
        mapped = sample_head(
            self.model.head,
            noise[:, start:].reshape(rows, c),
            z_BnD.reshape(rows, -1),
            num_steps=sampling.head_steps,
            cfg_scale=sampling.cfg_scale,
            z_uncond_ND=z_uncond,
        )
        return mapped.reshape(b, n - start, c)

    @torch.no_grad()
    def encode_images(self, images_01: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> tokens ``[B, n, C]`` (the tokenizer)."""
        res = self.image_size
        if images_01.dim() != 4 or tuple(images_01.shape[1:]) != (3, res, res):
            raise ValueError(f"images must be [B, 3, {res}, {res}], got {tuple(images_01.shape)}")
        return self.autoencoder.encode(images_01.to(self.device).float() * 2 - 1)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n, C]`` -> images ``[B, 3, H, W]`` in ``[0, 1]``."""
        return self.decode_embeddings(self.prepare_continuous(tokens)).detach()

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n, C]`` -> images in ``[0, 1]``, differentiable (straight-through
        clamp, as the other families)."""
        embeddings = self.prepare_embeddings(embeddings)
        images = (self.autoencoder.decode(embeddings.float()) + 1) / 2
        return clamp_straight_through(images, 0.0, 1.0)
