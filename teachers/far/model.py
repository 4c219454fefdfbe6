"""FAR-Causal (FAR Sec. 3.3, Fig. 2c): a causal transformer over continuous tokens whose
classification head is replaced by a per-token generative head (FAR Fig. 3).

- Backbone: ``[class, x_1 .. x_{n-1}]`` -> conditions ``z_1 .. z_n`` (``z_i`` has seen the class
  and ``x_{<i}``): a pre-LN GPT with learned positions, a class embedding whose last row is the
  null class (CFG), continuous tokens projected by one ``Linear(C -> dim)``. KV-cached for
  sampling (``KVCache``), so an AR step costs one position.
- Head: residual MLP blocks with adaptive LayerNorm (MAR's ``SimpleMLPAdaLN``: LayerNorm,
  modulate, Linear-SiLU-Linear, gated residual; zero-initialised modulation), conditioned on
  ``z_i`` + an embedding of the time ``t`` (+ an embedding of the step size ``d`` for the
  shortcut head). It returns a velocity ``v(x_t, t, d | z)`` with ``t = 0`` noise, ``t = 1``
  data: ``x_t = (1 - t) x_0 + t x_1`` (shortcut models' convention).

Shapes in names: ``B`` batch, ``T`` positions, ``D`` model width, ``C`` token width, ``N`` head
rows (any batch of per-token problems), ``W`` head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from teachers.far.config import FARConfig

TIME_FREQUENCIES = 128  # sinusoidal frequencies of the t and d embeddings (as DiT / MAR)
MAX_PERIOD = 10_000.0
TIME_SCALE = 1000.0  # t, d in [0, 1] scaled to DiT's [0, 1000] range before the sinusoids


class KVCache:
    """Per-layer keys and values ``[B, H, T, Dh]`` of the positions run so far."""

    def __init__(self, depth: int):
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, config: FARConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)

    def forward(self, x_BTD: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, d = x_BTD.shape
        q, k, v = self.qkv(x_BTD).view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            past = 0 if cache.keys[layer] is None else cache.keys[layer].shape[2]
            k, v = cache.extend(layer, k, v)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:  # new positions see every cached one and the earlier new ones
            allowed_TS = torch.ones(t, past + t, dtype=torch.bool, device=x_BTD.device).tril(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_TS)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, config: FARConfig):
        super().__init__()
        hidden = int(config.dim * config.mlp_ratio)
        self.norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, hidden), nn.GELU(), nn.Linear(hidden, config.dim)
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


def timestep_embedding(t_N: torch.Tensor, frequencies: int = TIME_FREQUENCIES) -> torch.Tensor:
    """DiT's sinusoidal embedding ``[N, frequencies]`` of ``t`` in ``[0, 1]`` (scaled by 1000)."""
    half = frequencies // 2
    freqs = torch.exp(
        -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t_N.device) / half
    )
    args = (t_N.float() * TIME_SCALE)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedder(nn.Module):
    """Sinusoids, then Linear-SiLU-Linear (DiT's ``TimestepEmbedder``); used for ``t`` and ``d``."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIME_FREQUENCIES, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, s_N: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(s_N))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    """MAR's ``ResBlock``: ``x + gate * MLP(modulate(LN(x), shift, scale))``."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x_NW: torch.Tensor, cond_NW: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(cond_NW).chunk(3, dim=-1)
        return x_NW + gate * self.mlp(modulate(self.norm(x_NW), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x_NW: torch.Tensor, cond_NW: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond_NW).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x_NW), shift, scale))


class FARHead(nn.Module):
    """The per-token head: ``v(x_t [N, C], t [N], d [N], z [N, D]) -> [N, C]`` (FAR Fig. 3).

    The flow-matching head (``head_kind="flow"``) has no step-size embedding and refuses a
    nonzero ``d``.
    """

    def __init__(self, config: FARConfig):
        super().__init__()
        width = config.head_width
        self.uses_step_size = config.head_kind == "shortcut"
        self.input_proj = nn.Linear(config.token_dim, width)
        self.cond_proj = nn.Linear(config.dim, width)
        self.time_embed = ScalarEmbedder(width)
        self.step_embed = ScalarEmbedder(width) if self.uses_step_size else None
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(config.head_depth))
        self.final = FinalLayer(width, config.token_dim)
        self._zero_init()

    def _zero_init(self) -> None:
        """Zero modulation: every block starts as the identity and the output as zero (DiT)."""
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final.modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x_NC: torch.Tensor, t_N: torch.Tensor, d_N: torch.Tensor, z_ND: torch.Tensor
    ) -> torch.Tensor:
        cond_NW = self.cond_proj(z_ND) + self.time_embed(t_N)
        if self.step_embed is not None:
            cond_NW = cond_NW + self.step_embed(d_N)
        elif bool((d_N != 0).any()):
            raise ValueError("the flow-matching head has no step size: d must be 0")
        x_NW = self.input_proj(x_NC)
        for block in self.blocks:
            x_NW = block(x_NW, cond_NW)
        return self.final(x_NW, cond_NW)


class FARCausal(nn.Module):
    """The causal backbone and the head. ``features`` is teacher forcing; ``step`` runs new
    positions through a ``KVCache``."""

    def __init__(self, config: FARConfig):
        super().__init__()
        self.config = config
        c = config
        self.class_emb = nn.Embedding(c.num_classes + 1, c.dim)  # last row: the null class
        self.token_proj = nn.Linear(c.token_dim, c.dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.head = FARHead(c)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.class_emb.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.depth)

    def embed(self, labels_B: torch.Tensor | None, tokens_BTC: torch.Tensor | None, start: int):
        """Inputs of positions ``start ..``: position 0 is the class, position ``i`` token
        ``x_i`` (1-based), i.e. ``tokens[:, j]`` sits at position ``start + j`` (+1 if the class
        is included)."""
        parts = []
        if labels_B is not None:
            parts.append(self.class_emb(labels_B)[:, None])
        if tokens_BTC is not None:
            parts.append(self.token_proj(tokens_BTC))
        h_BTD = torch.cat(parts, dim=1)
        return h_BTD + self.pos_emb[:, start : start + h_BTD.shape[1]]

    def transformer(self, h_BTD: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for layer, block in enumerate(self.blocks):
            h_BTD = block(h_BTD, cache, layer)
        return self.norm(h_BTD)

    def features(self, labels_B: torch.Tensor, tokens_BnC: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: conditions ``z [B, n, D]`` from ``[class, x_1 .. x_{n-1}]``."""
        h_BnD = self.embed(labels_B, tokens_BnC[:, :-1], start=0)
        return self.transformer(h_BnD)
