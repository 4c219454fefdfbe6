"""LlamaGen's class-conditional GPT (c2i), an independent implementation.

Sequence: ``[class, x_1, ..., x_n]``; the output at position ``k`` gives the logits of image
token ``x_{k+1}``. Llama-style blocks: pre-norm RMSNorm (computed in float32), causal
attention with 2D RoPE (``rope.py``), SwiGLU FFN ``w2(silu(w1 x) * w3 x)``, untied output.

Module and parameter names mirror the official state dict (``cls_embedding.embedding_table``,
``tok_embeddings``, ``layers.N.attention.wqkv``, ``layers.N.feed_forward.w1``, ``norm``,
``output``), so loading an official checkpoint is the identity key map (``loading.py``).

The KV cache is an explicit object (``KVCache``) owned by the caller and passed in; modules
hold no cache state, so nothing has to be switched on and off around a sampling loop.
The pieces a DD student reuses (embeddings, ``layers``, ``norm``, ``output``, ``freqs_cis``,
``transformer``) are public.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.llamagen.config import GPTConfig
from teachers.llamagen.rope import apply_rope, build_rope_2d

try:  # Optional: used only on CUDA in half precision, never required.
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

INIT_STD = 0.02  # official initializer_range


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_float = x.float()
        normed = x_float * torch.rsqrt(
            torch.mean(x_float * x_float, dim=-1, keepdim=True) + self.eps
        )
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LayerKV:
    """One layer's cached keys and values ``[B, H_kv, max_len, D]``, allocated at first write."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(
        self, start: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write positions ``[start, start+T)``; return the keys and values of ``[0, start+T)``."""
        end = start + k_BHTD.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        if self.keys is None:
            shape = (*k_BHTD.shape[:2], self.max_len, k_BHTD.shape[3])
            self.keys = k_BHTD.new_zeros(shape)
            self.values = v_BHTD.new_zeros(shape)
        self.keys[:, :, start:end] = k_BHTD
        self.values[:, :, start:end] = v_BHTD
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Keys and values of every layer for one incremental pass; drop it to free the memory."""

    def __init__(self, num_layers: int, max_len: int):
        self.layers = [LayerKV(max_len) for _ in range(num_layers)]


def attend(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last ``T`` of ``S`` positions (queries end where keys end)."""
    num_queries, num_keys = q_BHTD.shape[2], k_BHSD.shape[2]
    if (
        flash_attn_func is not None
        and q_BHTD.is_cuda
        and q_BHTD.dtype in (torch.float16, torch.bfloat16)
    ):
        # flash-attn aligns the causal mask bottom-right, which is what a cached suffix needs.
        out_BTHD = flash_attn_func(
            q_BHTD.transpose(1, 2),
            k_BHSD.transpose(1, 2),
            v_BHSD.transpose(1, 2),
            causal=num_queries > 1,
        )
        return out_BTHD.transpose(1, 2)
    heads, kv_heads = q_BHTD.shape[1], k_BHSD.shape[1]
    if kv_heads != heads:
        k_BHSD = k_BHSD.repeat_interleave(heads // kv_heads, dim=1)
        v_BHSD = v_BHSD.repeat_interleave(heads // kv_heads, dim=1)
    if num_queries == 1:
        return F.scaled_dot_product_attention(q_BHTD, k_BHSD, v_BHSD)
    if num_queries == num_keys:
        return F.scaled_dot_product_attention(q_BHTD, k_BHSD, v_BHSD, is_causal=True)
    offset = num_keys - num_queries
    mask_TS = torch.ones(num_queries, num_keys, dtype=torch.bool, device=q_BHTD.device).tril(offset)
    return F.scaled_dot_product_attention(q_BHTD, k_BHSD, v_BHSD, attn_mask=mask_TS)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.wqkv = nn.Linear(config.dim, qkv_dim, bias=False)  # rows [q | k | v]
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rope_TP2: torch.Tensor,
        *,
        start: int = 0,
        cache: LayerKV | None = None,
    ) -> torch.Tensor:
        batch, length, dim = x_BTD.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x_BTD).split([dim, kv_dim, kv_dim], dim=-1)
        q_BTHD = apply_rope(q.view(batch, length, self.n_head, self.head_dim), rope_TP2)
        k_BTHD = apply_rope(k.view(batch, length, self.n_kv_head, self.head_dim), rope_TP2)
        v_BTHD = v.view(batch, length, self.n_kv_head, self.head_dim)
        q_BHTD, k_BHTD, v_BHTD = (t.transpose(1, 2) for t in (q_BTHD, k_BTHD, v_BTHD))
        if cache is not None:
            k_BHTD, v_BHTD = cache.update(start, k_BHTD, v_BHTD)
        elif start != 0:
            raise ValueError("start > 0 needs a KV cache holding the earlier positions")
        out_BHTD = attend(q_BHTD, k_BHTD, v_BHTD)
        return self.wo(out_BHTD.transpose(1, 2).reshape(batch, length, dim))


class TransformerBlock(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rope_TP2: torch.Tensor,
        *,
        start: int = 0,
        cache: LayerKV | None = None,
    ) -> torch.Tensor:
        h = x_BTD + self.attention(self.attention_norm(x_BTD), rope_TP2, start=start, cache=cache)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding; row ``num_classes`` is the null class of CFG (present when the official
    ``class_dropout_prob > 0``, as in every released c2i model)."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_embeddings, dim)

    def forward(self, labels_B: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels_B).unsqueeze(1)  # [B, 1, D]


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.cls_embedding = LabelEmbedder(config.num_class_embeddings, config.dim)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Not a weight: rebuilt from the config, never saved (official files may carry it; dropped).
        self.register_buffer("freqs_cis", self.build_freqs_cis(), persistent=False)
        self.init_weights()

    def build_freqs_cis(self) -> torch.Tensor:
        c = self.config
        return build_rope_2d(c.grid_size, c.head_dim, c.rope_base, c.cls_token_num)

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after ``to_empty``, e.g. when built on ``meta``)."""
        self.freqs_cis = self.build_freqs_cis().to(self.tok_embeddings.weight.device)

    def init_weights(self, std: float = INIT_STD) -> None:
        """Random init (official: normal(0, 0.02)). The official training init also zeroes
        ``output``; not done here so that random-weight models give non-trivial logits."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.config.seq_len)

    def embed(self, labels_B: torch.Tensor, tokens_BL: torch.Tensor | None = None) -> torch.Tensor:
        """``[class, x_1..x_L]`` embeddings ``[B, 1 + L, D]``."""
        h_B1D = self.cls_embedding(labels_B)
        if tokens_BL is None or tokens_BL.shape[1] == 0:
            return h_B1D
        return torch.cat([h_B1D, self.tok_embeddings(tokens_BL)], dim=1)

    def transformer(
        self, h_BTD: torch.Tensor, *, start: int = 0, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Run the blocks on positions ``[start, start + T)`` -> hidden states before ``norm``."""
        end = start + h_BTD.shape[1]
        if end > self.config.seq_len:
            raise ValueError(f"positions up to {end} exceed the model's {self.config.seq_len}")
        rope_TP2 = self.freqs_cis[start:end]
        for index, layer in enumerate(self.layers):
            h_BTD = layer(
                h_BTD, rope_TP2, start=start, cache=None if cache is None else cache.layers[index]
            )
        return h_BTD

    def head(self, h_BTD: torch.Tensor) -> torch.Tensor:
        """Final norm and output projection -> float32 logits ``[B, T, V]``."""
        return self.output(self.norm(h_BTD)).float()

    def forward(
        self, labels_B: torch.Tensor, tokens_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full causal pass over ``[class, x_1..x_L]`` -> logits ``[B, 1 + L, V]``.

        ``logits[:, k]`` is the distribution of image token ``k`` (0-based) given the class and
        ``tokens[:, :k]``; teacher forcing on ``n`` tokens passes ``tokens[:, :-1]``.
        """
        return self.head(self.transformer(self.embed(labels_B, tokens_BL)))
