"""VAR's multi-scale VQVAE: encoder, quant_conv, residual quantiser, post_quant_conv, decoder.

Images are ``[B, 3, H, W]`` in ``[-1, 1]`` (the ``*_0to1`` helpers map to ``[0, 1]``);
``H = patch_nums[-1] * 2^(len(ch_mult) - 1)``. Tokens are per-scale raster indices
concatenated over scales, ``[B, n]`` with ``n = sum(p^2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from teachers.var.config import VQVAEConfig
from teachers.var.quant import VectorQuantizer
from teachers.var.vae_blocks import Decoder, Encoder


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        trunk = dict(
            ch=config.ch,
            ch_mult=config.ch_mult,
            num_res_blocks=config.num_res_blocks,
            z_channels=config.z_channels,
            in_channels=config.in_channels,
            using_sa=config.using_sa,
            using_mid_sa=config.using_mid_sa,
            groups=config.norm_groups,
        )
        self.encoder = Encoder(**trunk)
        self.decoder = Decoder(**trunk)
        self.quantize = VectorQuantizer(config)
        ks, C = config.quant_conv_ks, config.z_channels
        self.quant_conv = nn.Conv2d(C, C, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(C, C, ks, padding=ks // 2)

    @property
    def codebook(self) -> torch.Tensor:
        """The raw codebook ``[V, Cvae]`` (no normalisation: VAR's quantiser is plain L2)."""
        return self.quantize.embedding.weight

    def img_to_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(img_B3HW))

    def encode_indices(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Multi-scale tokens ``[B, n]`` of images in ``[-1, 1]``."""
        indices, _ = self.quantize.residual_quantize(self.img_to_f(img_B3HW))
        return torch.cat(indices, dim=1)

    def encode(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens ``[B, n]``, final ``f_hat [B, Cvae, p_K, p_K]``) of images in ``[-1, 1]``."""
        indices, f_hats = self.quantize.residual_quantize(self.img_to_f(img_B3HW))
        return torch.cat(indices, dim=1), f_hats[-1]

    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` (clamped, as released) from ``f_hat``."""
        return self.fhat_to_unclamped_img(f_hat_BChw).clamp(-1, 1)

    def fhat_to_unclamped_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """The decoder's output before the release's clamp (for gradient paths)."""
        return self.decoder(self.post_quant_conv(f_hat_BChw))

    def indices_to_fhat(self, indices_Bn: torch.Tensor) -> torch.Tensor:
        return self.quantize.embed_to_fhat(self.quantize.indices_to_maps(indices_Bn))

    def embeddings_to_fhat(self, embeddings_BnC: torch.Tensor) -> torch.Tensor:
        """``f_hat`` from continuous per-token embeddings ``[B, n, Cvae]`` (differentiable)."""
        return self.quantize.embed_to_fhat(self.quantize.split_scales(embeddings_BnC))

    def indices_to_img(self, indices_Bn: torch.Tensor) -> torch.Tensor:
        return self.fhat_to_img(self.indices_to_fhat(indices_Bn))

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, unclamped, in image space; VQ loss)."""
        f_hat, vq_loss, _ = self.quantize(self.img_to_f(img_B3HW))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss
