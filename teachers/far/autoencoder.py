"""The continuous tokenizer of the embedded default: a plain convolutional autoencoder.

Why plain and not KL: the encoder is deterministic, so an image has exactly one token
sequence (the round trip is a function, testable to a bound) and there is no KL weight to tune.
What a KL term buys a generator (a latent of bounded, comparable scale that tolerates small
errors) is obtained here by standardising every latent channel with the training set's mean and
standard deviation (buffers ``latent_mean`` / ``latent_std``, set once after training) and by
training the decoder on latents with Gaussian noise added (``teachers.tiny.train_far``).

Tokens are the standardised latents ``[B, n, C]`` in raster order of the ``grid x grid`` map.
Images are ``[B, 3, R, R]`` in ``[-1, 1]`` on the way in; ``decode`` returns ``[-1, 1]`` values
(unclamped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.far.config import AutoencoderConfig


class ConvBlock(nn.Module):
    """conv3x3 - GroupNorm - SiLU, twice."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm1(self.conv1(x)))
        return F.silu(self.norm2(self.conv2(x)))


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        c = config
        widths = (c.in_channels, *c.widths)
        self.down = nn.ModuleList(
            ConvBlock(a, b, c.norm_groups) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.to_latent = nn.Conv2d(c.widths[-1], c.token_dim, 1)
        self.from_latent = nn.Conv2d(c.token_dim, c.widths[-1], 3, padding=1)
        rev = tuple(reversed(c.widths))
        self.up = nn.ModuleList(
            ConvBlock(a, b, c.norm_groups) for a, b in zip(rev, (*rev[1:], rev[-1]), strict=True)
        )
        self.to_image = nn.Conv2d(rev[-1], c.in_channels, 3, padding=1)
        self.register_buffer("latent_mean", torch.zeros(c.token_dim))
        self.register_buffer("latent_std", torch.ones(c.token_dim))

    def encode_latents(self, images_m11: torch.Tensor) -> torch.Tensor:
        """Raw (unstandardised) latents ``[B, C, g, g]``."""
        x = images_m11
        for block in self.down:
            x = F.avg_pool2d(block(x), 2)
        return self.to_latent(x)

    def decode_latents(self, latents_BCgg: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images ``[B, 3, R, R]`` (``[-1, 1]`` scale, unclamped)."""
        x = self.from_latent(latents_BCgg)
        for block in self.up:
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"))
        return self.to_image(x)

    def _standardise(self, latents_BCgg: torch.Tensor) -> torch.Tensor:
        return (latents_BCgg - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def _unstandardise(self, maps_BCgg: torch.Tensor) -> torch.Tensor:
        return maps_BCgg * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def encode(self, images_m11: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` -> tokens ``[B, n, C]`` (standardised latents, raster order)."""
        maps_BCgg = self._standardise(self.encode_latents(images_m11))
        return maps_BCgg.flatten(2).transpose(1, 2)

    def decode(self, tokens_BnC: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n, C]`` -> images in ``[-1, 1]`` (unclamped), differentiable."""
        g = self.config.grid_size
        maps_BCgg = tokens_BnC.transpose(1, 2).reshape(-1, self.config.token_dim, g, g)
        return self.decode_latents(self._unstandardise(maps_BCgg))
