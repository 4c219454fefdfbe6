"""VAR's multi-scale residual quantiser (VAR paper Alg. 1 and 2; official models/quant.py).

Encoding goes coarse to fine: area-downsample the residual to scale ``k``'s grid, take the
nearest codes (plain L2), upsample their embeddings bicubically to the last grid, apply the
scale's ``phi`` and add to ``f_hat``; subtract from the residual. Decoding is the same
``f_hat`` accumulation from indices or from continuous per-scale embeddings; the next-scale
AR input is ``f_hat`` area-downsampled to the next grid.

Names mirror the checkpoint: ``quantize.embedding``, ``quantize.ema_vocab_hit_SV``,
``quantize.quant_resi.qresi_ls.N`` (``qresi`` when fully shared, ``N`` when not shared).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from teachers.var.config import VQVAEConfig

PHI_KERNEL = 3
_ZERO_RESI = 1e-6  # |quant_resi| below this: phi is the identity (official rule)


class Phi(nn.Conv2d):
    """``phi(h) = (1 - r) h + r conv3x3(h)`` with ``r = |quant_resi|`` (0.5 in the release)."""

    def __init__(self, channels: int, resi_ratio: float) -> None:
        super().__init__(channels, channels, PHI_KERNEL, padding=PHI_KERNEL // 2)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.resi_ratio) + super().forward(h_BChw) * self.resi_ratio


def phi_ticks(count: int) -> np.ndarray:
    """Positions in [0, 1] the ``count`` shared phis stand for (official rule, numpy floats).

    With four phis the ticks are ``linspace(1/12, 11/12, 4)``; the scale at relative
    position ``si / (K - 1)`` uses the nearest tick. Computed with numpy exactly as released
    because at K = 10 scale 2 sits on an exact tie that float rounding decides.
    """
    if count == 4:
        return np.linspace(1 / 3 / count, 1 - 1 / 3 / count, count)
    return np.linspace(1 / 2 / count, 1 - 1 / 2 / count, count)


def phi_index(scale_index: int, num_scales: int, count: int) -> int:
    at = scale_index / (num_scales - 1)
    return int(np.argmin(np.abs(phi_ticks(count) - at)).item())


def _make_phi(channels: int, ratio: float) -> nn.Module:
    return Phi(channels, ratio) if abs(ratio) > _ZERO_RESI else nn.Identity()


class PhiPartiallyShared(nn.Module):
    def __init__(self, phis: list[nn.Module]) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)

    def for_scale(self, scale_index: int, num_scales: int) -> nn.Module:
        return self.qresi_ls[phi_index(scale_index, num_scales, len(self.qresi_ls))]


class PhiShared(nn.Module):
    def __init__(self, phi: nn.Module) -> None:
        super().__init__()
        self.qresi = phi

    def for_scale(self, scale_index: int, num_scales: int) -> nn.Module:
        return self.qresi


class PhiNonShared(nn.ModuleList):
    def for_scale(self, scale_index: int, num_scales: int) -> nn.Module:
        return self[phi_index(scale_index, num_scales, len(self))]


class VectorQuantizer(nn.Module):
    """Codebook ``embedding [V, Cvae]`` + the phi bank; every grid is square, raster order."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_nums = config.patch_nums
        C, ratio, share = config.z_channels, config.quant_resi, config.share_quant_resi
        if share == 0:
            count = config.default_qresi_counts or len(self.patch_nums)
            self.quant_resi: nn.Module = PhiNonShared([_make_phi(C, ratio) for _ in range(count)])
        elif share == 1:
            self.quant_resi = PhiShared(_make_phi(C, ratio))
        else:
            self.quant_resi = PhiPartiallyShared([_make_phi(C, ratio) for _ in range(share)])
        # Training statistic of code usage per scale; kept so checkpoints load strictly.
        self.register_buffer(
            "ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), config.vocab_size)
        )
        self.embedding = nn.Embedding(config.vocab_size, C)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, scale_index: int) -> nn.Module:
        return self.quant_resi.for_scale(scale_index, self.num_scales)

    def nearest_codes(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of every row (L2, or cosine with ``using_znorm``)."""
        codes_VC = self.embedding.weight.detach()
        if self.config.using_znorm:
            return (F.normalize(z_NC, dim=-1) @ F.normalize(codes_VC, dim=-1).T).argmax(dim=1)
        dist_NV = z_NC.square().sum(1, keepdim=True) + codes_VC.square().sum(1)
        dist_NV = torch.addmm(dist_NV, z_NC, codes_VC.T, alpha=-2, beta=1)
        return dist_NV.argmin(dim=1)

    def upsampled_phi(self, scale_index: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """Scale ``k``'s contribution to ``f_hat``: bicubic up to the last grid, then phi."""
        last = self.patch_nums[-1]
        if scale_index != self.num_scales - 1:
            h_BChw = F.interpolate(h_BChw, size=(last, last), mode="bicubic")
        return self.phi(scale_index)(h_BChw)

    @torch.no_grad()
    def residual_quantize(
        self, f_BChw: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Multi-scale encoding -> (per-scale indices ``[B, p*p]``, ``f_hat`` after each scale)."""
        B, C, H, W = f_BChw.shape
        last = self.patch_nums[-1]
        if (H, W) != (last, last):
            raise ValueError(f"latent grid {(H, W)} does not match the last scale {last}x{last}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        indices, f_hats = [], []
        for si, pn in enumerate(self.patch_nums):
            rest = (
                f_rest
                if si == self.num_scales - 1
                else F.interpolate(f_rest, size=(pn, pn), mode="area")
            )
            idx_N = self.nearest_codes(rest.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
            h_BChw = self.upsampled_phi(si, h_BChw)
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)
            indices.append(idx_N.reshape(B, pn * pn))
            f_hats.append(f_hat.clone())
        return indices, f_hats

    def split_scales(self, per_token_BnC: torch.Tensor) -> list[torch.Tensor]:
        """``[B, n, C]`` over all scales -> per-scale maps ``[B, C, p, p]`` (raster order)."""
        B, n, C = per_token_BnC.shape
        expected = sum(p * p for p in self.patch_nums)
        if n != expected:
            raise ValueError(f"expected {expected} tokens over scales {self.patch_nums}, got {n}")
        maps, start = [], 0
        for pn in self.patch_nums:
            chunk = per_token_BnC[:, start : start + pn * pn]
            maps.append(chunk.transpose(1, 2).reshape(B, C, pn, pn))
            start += pn * pn
        return maps

    def embed_to_fhat(self, ms_h_BChw: list[torch.Tensor]) -> torch.Tensor:
        """Sum of every scale's upsampled, phi-mapped embedding map: differentiable."""
        f_hat = None
        for si, h_BChw in enumerate(ms_h_BChw):
            term = self.upsampled_phi(si, h_BChw.float())
            f_hat = term if f_hat is None else f_hat + term
        return f_hat

    def indices_to_maps(self, indices_Bn: torch.Tensor) -> list[torch.Tensor]:
        return self.split_scales(self.embedding(indices_Bn))

    def next_autoregressive_input(
        self, scale_index: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale ``k``'s embeddings to ``f_hat``; return it and the next scale's input map."""
        f_hat_BChw = f_hat_BChw + self.upsampled_phi(scale_index, h_BChw)
        if scale_index == self.num_scales - 1:
            return f_hat_BChw, None
        pn_next = self.patch_nums[scale_index + 1]
        return f_hat_BChw, F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")

    def indices_to_var_input(self, indices_Bn: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing input: next-scale inputs of scales 1..K-1, ``[B, L - first_l, C]``."""
        maps = self.indices_to_maps(indices_Bn)
        B, C = indices_Bn.shape[0], self.config.z_channels
        last = self.patch_nums[-1]
        f_hat = maps[0].new_zeros(B, C, last, last)
        inputs = []
        for si in range(self.num_scales - 1):
            f_hat, next_BChw = self.next_autoregressive_input(si, f_hat, maps[si])
            inputs.append(next_BChw.reshape(B, C, -1).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def forward(
        self, f_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: straight-through ``f_hat``, the VQ loss, per-scale indices.

        Loss (mean over scales): ``beta * |f_hat.detach() - f|^2 + |f_hat - f.detach()|^2``;
        the code-usage statistic ``ema_vocab_hit_SV`` is not updated here.
        """
        f = f_BChw.float()
        f_no_grad = f.detach()
        B, C, _, _ = f.shape
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_no_grad)
        loss = f.new_zeros(())
        indices = []
        for si, pn in enumerate(self.patch_nums):
            rest = (
                f_rest
                if si == self.num_scales - 1
                else F.interpolate(f_rest, size=(pn, pn), mode="area")
            )
            with torch.no_grad():
                idx_N = self.nearest_codes(rest.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.upsampled_phi(
                si, self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
            )
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            loss = (
                loss
                + self.config.beta * F.mse_loss(f_hat.detach(), f)
                + F.mse_loss(f_hat, f_no_grad)
            )
            indices.append(idx_N.reshape(B, pn * pn))
        f_hat_st = f + (f_hat - f).detach()  # straight-through estimator
        return f_hat_st, loss / self.num_scales, indices
