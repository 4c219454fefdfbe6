"""The VAR transformer: next-scale prediction with AdaLN blocks (VAR models/var.py, basic_var.py).

Sequence of ``L = sum(p^2)`` positions: scale 0 is the start token
``class_emb(label) + pos_start``; scale ``k > 0`` is ``word_embed`` of the next-scale input
(``f_hat`` area-downsampled to grid ``p_k``); every position adds
``lvl_embed(level) + pos_1LC``. Teacher forcing uses the block-causal mask
``attn_bias_for_masking`` (a token sees its own and all earlier scales); sampling runs one
scale at a time through a :class:`KVCache` owned by the caller, with no mask.

Every parameter and buffer name mirrors the official state dict, so a release checkpoint
loads with ``load_state_dict(strict=True)``. The pieces a DD student reuses (``word_embed``,
``blocks``, ``head_nm``/``head``, ``block_causal_bias``) are public.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from teachers.var.config import VARConfig

ADALN_CHUNKS = 6  # gamma1, gamma2, scale1, scale2, shift1, shift2 (official order)
HEAD_ADALN_CHUNKS = 2  # scale, shift
L2_ATTN_INIT_SCALE = 4.0  # scale_mul_1H11 starts at log(4)
L2_ATTN_MAX_SCALE = 100.0  # q is scaled by exp(min(scale_mul_1H11, ln 100))


def level_ids(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Scale index of every position, ``[L]``."""
    return torch.cat([torch.full((p * p,), k, dtype=torch.long) for k, p in enumerate(patch_nums)])


def block_causal_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Additive mask ``[1, 1, L, L]``: 0 where a query's scale >= the key's scale, else -inf."""
    lvl = level_ids(patch_nums)
    return torch.where(lvl[:, None] >= lvl[None, :], 0.0, float("-inf")).reshape(
        1, 1, len(lvl), len(lvl)
    )


class KVCache:
    """Keys and values of every block for the positions already run; owned by a session."""

    def __init__(self, depth: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth

    def extend(
        self, block_idx: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[block_idx] is not None:
            k_BHlc = torch.cat((self.k[block_idx], k_BHlc), dim=2)
            v_BHlc = torch.cat((self.v[block_idx], v_BHlc), dim=2)
        self.k[block_idx], self.v[block_idx] = k_BHlc, v_BHlc
        return k_BHlc, v_BHlc

    def clear(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


class SelfAttention(nn.Module):
    """Multi-head attention, fused ``mat_qkv`` with bias ``(q_bias, 0, v_bias)``.

    With ``attn_l2_norm`` (release checkpoints) q and k are L2-normalised per head, q is
    multiplied by ``exp(min(scale_mul_1H11, ln 100))`` and the softmax scale is 1; otherwise
    the scale is ``0.25 / sqrt(head_dim)`` (early checkpoints).
    """

    def __init__(self, block_idx: int, embed_dim: int, num_heads: int, attn_l2_norm: bool) -> None:
        super().__init__()
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(
                torch.full((1, num_heads, 1, 1), math.log(L2_ATTN_INIT_SCALE))
            )
            self.max_scale_mul = math.log(L2_ATTN_MAX_SCALE)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self, x_BLC: torch.Tensor, attn_bias: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(
            B, L, 3, self.num_heads, self.head_dim
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # BHLc each
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1) * scale_mul
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.extend(self.block_idx, k, v)
        out_BHLc = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(out_BHLc.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block whose LayerNorm scale/shift and residual gates come from the class.

    ``cond`` is the class embedding ``[B, D]`` (``ada_lin`` maps it to 6 C), or, with
    ``shared_aln``, the shared ``[B, 1, 6, C]`` modulation that ``ada_gss`` offsets.
    """

    def __init__(self, block_idx: int, config: VARConfig) -> None:
        super().__init__()
        C = config.embed_dim
        self.C, self.shared_aln = C, config.shared_aln
        self.attn = SelfAttention(block_idx, C, config.num_heads, config.attn_l2_norm)
        self.ffn = FFN(C, round(C * config.mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=config.norm_eps, elementwise_affine=False)
        if config.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, ADALN_CHUNKS, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, ADALN_CHUNKS * C))

    def forward(
        self,
        x_BLC: torch.Tensor,
        cond: torch.Tensor,
        attn_bias: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        if self.shared_aln:
            mods = (self.ada_gss + cond).unbind(2)
        else:
            mods = self.ada_lin(cond).view(-1, 1, ADALN_CHUNKS, self.C).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods  # B1C each
        h = self.ln_wo_grad(x_BLC) * (scale1 + 1) + shift1
        x_BLC = x_BLC + self.attn(h, attn_bias, cache) * gamma1
        h = self.ln_wo_grad(x_BLC) * (scale2 + 1) + shift2
        return x_BLC + self.ffn(h) * gamma2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, embed_dim: int, norm_eps: float) -> None:
        super().__init__()
        self.C = embed_dim
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, HEAD_ADALN_CHUNKS * embed_dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, HEAD_ADALN_CHUNKS, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC) * (scale + 1) + shift


class SharedAdaLin(nn.Linear):
    """``shared_aln`` variant: one Linear(D, 6C) for all blocks -> ``[B, 1, 6, C]``."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        C = self.weight.shape[0] // ADALN_CHUNKS
        return super().forward(cond_BD).view(-1, 1, ADALN_CHUNKS, C)


class VAR(nn.Module):
    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.config = config
        C, L = config.embed_dim, config.num_tokens
        self.word_embed = nn.Linear(config.cvae, C)
        self.class_emb = nn.Embedding(config.num_classes + 1, C)  # row num_classes: the null class
        self.pos_start = nn.Parameter(torch.zeros(1, config.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(config.num_scales, C)
        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(), SharedAdaLin(C, ADALN_CHUNKS * C))
            if config.shared_aln
            else nn.Identity()
        )
        self.blocks = nn.ModuleList(AdaLNSelfAttn(i, config) for i in range(config.depth))
        # Persistent buffers of the official model (they are in the checkpoint).
        self.register_buffer("lvl_1L", level_ids(config.patch_nums).view(1, L))
        self.register_buffer("attn_bias_for_masking", block_causal_bias(config.patch_nums))
        self.head_nm = AdaLNBeforeHead(C, config.norm_eps)
        self.head = nn.Linear(C, config.vocab_size)
        self.init_weights()

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def init_weights(self, seed: int | None = None) -> None:
        """Random weights (truncated normal, std ``sqrt(1 / 3C)``) for tests and benchmarks."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        std = math.sqrt(1 / self.config.embed_dim / 3)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("scale_mul_1H11"):
                    p.fill_(math.log(L2_ATTN_INIT_SCALE))
                elif (
                    name.endswith("bias")
                    and p.dim() == 1
                    and "q_bias" not in name
                    and "v_bias" not in name
                ):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=generator).clamp_(-2, 2) * std)

    # ---- inputs
    def lvl_pos(self) -> torch.Tensor:
        """``lvl_embed(level) + pos_1LC``, ``[1, L, C]``."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Scale-0 input ``[B, first_l, C]``: class embedding + ``pos_start`` + level/position."""
        first_l = self.config.first_l
        return cond_BD.unsqueeze(1) + self.pos_start + self.lvl_pos()[:, :first_l]

    def scale_tokens(self, scale_index: int, next_input_BlCv: torch.Tensor) -> torch.Tensor:
        """Input of scale ``k > 0``: ``word_embed`` of the next-scale input + level/position."""
        begin, end = self.config.scale_ranges[scale_index]
        return self.word_embed(next_input_BlCv.float()) + self.lvl_pos()[:, begin:end]

    # ---- trunk
    def run_blocks(
        self,
        x_BLC: torch.Tensor,
        cond_BD: torch.Tensor,
        attn_bias: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        cond = self.shared_ada_lin(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, attn_bias, cache)
        return x_BLC

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD).float()).float()

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher forcing -> logits ``[B, L, V]`` (official signature).

        ``x_BLCv_wo_first_l``: next-scale inputs of scales 1..K-1, ``[B, L - first_l, Cvae]``.
        A pure function of its inputs in both modes: the training-time label drop (CFG,
        ``cond_drop_rate``) is the caller's, who passes ``null_class`` for dropped labels
        from its own seeded generator (the official forward draws it from the global RNG,
        in eval mode too).
        """
        cond_BD = self.class_emb(label_B)
        first_l = self.config.first_l
        sos = cond_BD.unsqueeze(1) + self.pos_start  # B, first_l, C
        x_BLC = torch.cat(
            (sos.expand(-1, first_l, -1), self.word_embed(x_BLCv_wo_first_l.float())), dim=1
        )
        x_BLC = x_BLC + self.lvl_pos()
        h = self.run_blocks(x_BLC, cond_BD, self.attn_bias_for_masking.to(x_BLC.dtype))
        return self.get_logits(h, cond_BD)
