"""Convolutional encoder and decoder of VAR's VQVAE (the LDM ``vq-f16`` layout).

Parameter names mirror the official state dict (``encoder.down.N.block.M.conv1`` ...), so the
released ``vae_ch160v4096z32.pth`` loads with a strict ``load_state_dict``. Images are in
``[-1, 1]``; ``decoder.up[0]`` is the highest resolution (levels are indexed bottom-up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPS = 1e-6


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=GROUP_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # A 1x1 shortcut only when the width changes (no keys otherwise).
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention, fused ``qkv`` 1x1 conv, softmax scale ``C^-1/2``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        qkv_B3CN = self.qkv(self.norm(x_BCHW)).reshape(B, 3, C, H * W)
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in qkv_B3CN.unbind(1))  # B1NC each
        h_B1NC = F.scaled_dot_product_attention(q, k, v)
        h_BCHW = h_B1NC.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x_BCHW + self.proj_out(h_BCHW)


class Downsample2x(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom (asymmetric, as released)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (maybe empty), a resampler."""

    def __init__(
        self,
        blocks: list[nn.Module],
        attns: list[nn.Module],
        resample: nn.Module | None,
        resample_name: str,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            self.add_module(resample_name, resample)
        self.resample_name = resample_name if resample is not None else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self.resample_name is not None:
            h = getattr(self, self.resample_name)(h)
        return h


class Mid(nn.Module):
    def __init__(self, channels: int, groups: int, using_mid_sa: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if using_mid_sa else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image ``[B, 3, H, W]`` -> latent ``[B, z, H / 2^(levels-1), W / 2^(levels-1)]``."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        in_channels: int,
        using_sa: bool,
        using_mid_sa: bool,
        groups: int,
    ) -> None:
        super().__init__()
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, block_in = [], ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups))
                block_in = block_out
            attns = (
                [AttnBlock(block_in, groups) for _ in range(num_res_blocks)]
                if (i == last and using_sa)
                else []
            )
            down = Downsample2x(block_in) if i != last else None
            levels.append(Level(blocks, attns, down, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = Mid(block_in, groups, using_mid_sa)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent ``[B, z, h, w]`` -> image ``[B, 3, h * 2^(levels-1), ...]`` (unclamped)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        in_channels: int,
        using_sa: bool,
        using_mid_sa: bool,
        groups: int,
    ) -> None:
        super().__init__()
        last = len(ch_mult) - 1
        block_in = ch * ch_mult[last]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in, groups, using_mid_sa)
        levels: list[Level] = []
        for i in reversed(range(len(ch_mult))):  # built top (lowest resolution) down
            block_out = ch * ch_mult[i]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, groups))
                block_in = block_out
            attns = (
                [AttnBlock(block_in, groups) for _ in range(num_res_blocks + 1)]
                if (i == last and using_sa)
                else []
            )
            up = Upsample2x(block_in) if i != 0 else None
            levels.insert(0, Level(blocks, attns, up, "upsample"))
        self.up = nn.ModuleList(levels)  # up[0]: highest resolution
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, in_channels, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
