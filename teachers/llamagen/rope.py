"""LlamaGen's 2D rotary position embedding (official autoregressive/models/gpt.py).

Each head's ``head_dim`` channels form ``head_dim / 2`` rotation pairs of *adjacent*
channels ``(2i, 2i+1)``. The first half of the pairs rotate by the token's row index, the
second half by its column index, with ``head_dim / 4`` frequencies
``1 / base^(arange(0, half, 2) / half)``, ``half = head_dim / 2``. The class position(s) get
``cos = sin = 0``, so their queries and keys are exactly zero: a quirk of the official
model that the weights were trained with, kept here on purpose.
"""

from __future__ import annotations

import torch


def build_rope_2d(grid_size: int, head_dim: int, base: float, cls_token_num: int) -> torch.Tensor:
    """``[cls_token_num + grid_size**2, head_dim // 2, 2]`` table of (cos, sin), float32."""
    half = head_dim // 2
    inv_freq_F = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles_GF = torch.outer(torch.arange(grid_size), inv_freq_F)
    num_freqs = angles_GF.shape[1]
    angles_GGP = torch.cat(
        [
            angles_GF[:, None, :].expand(-1, grid_size, num_freqs),  # row index
            angles_GF[None, :, :].expand(grid_size, -1, num_freqs),  # column index
        ],
        dim=-1,
    )
    table_NP2 = torch.stack([angles_GGP.cos(), angles_GGP.sin()], dim=-1).flatten(0, 1)
    class_rows = torch.zeros(cls_token_num, half, 2)
    return torch.cat([class_rows, table_NP2])


def apply_rope(x_BTHD: torch.Tensor, rope_TP2: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x [B, T, H, D]`` by ``rope [T, D/2, 2]``; in float32."""
    pairs = x_BTHD.float().reshape(*x_BTHD.shape[:-1], -1, 2)  # [B, T, H, D/2, 2]
    cos = rope_TP2[None, :, None, :, 0]
    sin = rope_TP2[None, :, None, :, 1]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(3).type_as(x_BTHD)
