"""LlamaGen's VQ tokenizer (VQ-16 / VQ-8), an independent implementation.

Images ``[B, 3, H, W]`` in ``[-1, 1]`` -> encoder -> ``quant_conv`` (1x1, z -> C) -> nearest
code of the L2-normalised codebook -> ``post_quant_conv`` (1x1, C -> z) -> decoder.
Encoder levels run from full to lowest resolution, decoder levels (``decoder.conv_blocks.0``
first) from lowest to full; the lowest level has an attention block after every res block;
GroupNorm(32, eps 1e-6) and swish throughout. Names mirror the official state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.llamagen.config import VQConfig

NORM_EPS = 1e-6


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with separate 1x1 q, k, v convs."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x_BCHW.shape
        h = self.norm(x_BCHW)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:  # [B, 1, HW, C]
            return conv(h).flatten(2).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out_BCHW = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x_BCHW + self.proj_out(out_BCHW)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: res blocks (each followed by attention at the lowest level), resampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        num_blocks: int,
        *,
        with_attn: bool,
        groups: int,
        resample: str | None,
    ):
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(
            AttnBlock(out_ch, groups) for _ in range(num_blocks if with_attn else 0)
        )
        if resample == "down":
            self.downsample = Downsample(out_ch)
        elif resample == "up":
            self.upsample = Upsample(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[index](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _mid(channels: int, groups: int, *, with_attn: bool = True) -> nn.ModuleList:
    """Res, attention, res (official); res, res without attention (``decoder_attention``)."""
    blocks = nn.ModuleList([ResnetBlock(channels, channels, groups)])  # built in this order:
    if with_attn:  # the parameters' random initialisation follows it
        blocks.append(AttnBlock(channels, groups))
    blocks.append(ResnetBlock(channels, channels, groups))
    return blocks


class Encoder(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        ch, mult, groups = config.ch, config.ch_mult, config.norm_groups
        last = len(mult) - 1
        self.conv_in = nn.Conv2d(config.in_channels, ch, kernel_size=3, padding=1)
        in_mult = (1, *mult)
        self.conv_blocks = nn.ModuleList(
            Level(
                ch * in_mult[i],
                ch * mult[i],
                config.num_res_blocks,
                with_attn=i == last,
                groups=groups,
                resample=None if i == last else "down",
            )
            for i in range(len(mult))
        )
        width = ch * mult[-1]
        self.mid = _mid(width, groups)
        self.norm_out = _group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.z_channels, kernel_size=3, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_B3HW)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        ch, mult, groups = config.dec_ch, config.ch_mult, config.norm_groups
        last = len(mult) - 1
        width = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, kernel_size=3, padding=1)
        self.mid = _mid(width, groups, with_attn=config.decoder_attention)
        levels = []
        for i in reversed(range(len(mult))):  # conv_blocks.0 is the lowest resolution
            levels.append(
                Level(
                    width,
                    ch * mult[i],
                    config.dec_num_res_blocks + 1,
                    with_attn=config.decoder_attention and i == last,
                    groups=groups,
                    resample=None if i == 0 else "up",
                )
            )
            width = ch * mult[i]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = _group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.in_channels, kernel_size=3, padding=1)

    def forward(self, z_BZhw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z_BZhw)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest code by squared L2 distance, both sides L2-normalised when ``codebook_l2_norm``."""

    CODEBOOK_USAGE_WINDOW = 65536  # official size of the ``codebook_used`` statistics buffer

    def __init__(self, config: VQConfig):
        super().__init__()
        self.l2_norm = config.codebook_l2_norm
        self.embedding = nn.Embedding(config.codebook_size, config.codebook_embed_dim)
        if (
            config.codebook_show_usage
        ):  # training statistics only; kept so official files load strictly
            self.register_buffer("codebook_used", torch.zeros(self.CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """``[V, C]`` codes as looked up and decoded (L2-normalised rows when ``l2_norm``)."""
        weight = self.embedding.weight
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def forward(self, z_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (quantised ``[B, C, H, W]`` with straight-through gradient, indices ``[B, H, W]``)."""
        z_BHWC = z_BCHW.permute(0, 2, 3, 1)
        if self.l2_norm:
            z_BHWC = F.normalize(z_BHWC, p=2, dim=-1)
        flat_NC = z_BHWC.reshape(-1, z_BHWC.shape[-1])
        codes_VC = self.codebook()
        dist_NV = (
            (flat_NC**2).sum(1, keepdim=True) + (codes_VC**2).sum(1) - 2 * flat_NC @ codes_VC.T
        )
        indices_BHW = dist_NV.argmin(dim=1).view(z_BHWC.shape[:3])
        quant_BHWC = codes_VC[indices_BHW]
        quant_BHWC = z_BHWC + (quant_BHWC - z_BHWC).detach()
        return quant_BHWC.permute(0, 3, 1, 2), indices_BHW


class VQModel(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(
            config.codebook_embed_dim, config.z_channels, kernel_size=1
        )

    def codebook(self) -> torch.Tensor:
        return self.quantize.codebook()

    def encode(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in ``[-1, 1]`` -> (quantised ``[B, C, h, w]``, raster indices ``[B, h * w]``)."""
        quant_BChw, indices_Bhw = self.quantize(self.quant_conv(self.encoder(images_B3HW)))
        return quant_BChw, indices_Bhw.flatten(1)

    def decode(self, quant_BChw: torch.Tensor) -> torch.Tensor:
        """Continuous code maps ``[B, C, h, w]`` -> images in ``[-1, 1]`` (not clamped)."""
        return self.decoder(self.post_quant_conv(quant_BChw))

    def decode_code(self, indices_BN: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Raster indices ``[B, h * w]`` -> images in ``[-1, 1]``."""
        height, width = grid
        codes_BNC = self.codebook()[indices_BN]
        # Contiguous NCHW, as the official get_codebook_entry returns: the permuted view is
        # channels-last in memory, and the decoder then ran channels-last, slower on CPU (tiny
        # decoder, batch 64: 10.8-11.8 ms against 7.0-7.1; docs/benchmarks.md).
        maps_BChw = codes_BNC.view(indices_BN.shape[0], height, width, -1).permute(0, 3, 1, 2)
        return self.decode(maps_BChw.contiguous())
