"""The incremental, KV-cached LlamaGen sampling session (``teachers.protocol.TeacherSession``).

Official semantics (``autoregressive/models/generate.py``):
- with guidance the batch is ``[cond; null]`` and both halves receive the chosen token;
- logits ``uncond + (cond - uncond) * cfg_scale`` (constant scale);
- ``cfg_interval``: image token 0 (the prefill) is always guided; token ``t >= 1`` is decode
  step ``i = t - 1`` and is guided unless ``cfg_interval > -1 and i > cfg_interval``
  (then the conditional logits are used alone); ``-1`` guides every token;
- then ``logits / temperature``, top-k, top-p (``teachers.sampling.filter_logits``).
The official ``generate`` skips guidance entirely for ``cfg_scale <= 1``; here any scale other
than 1 applies the formula above (``0`` gives unconditional sampling), and ``1`` runs no null
half, as officially.

Tokens accepted are run through the model lazily, all pending ones in one pass, the next
time log-probabilities are asked for: accepting a whole given prefix (paper Alg. 4) costs
one forward, and accepting the last token costs none.
"""

from __future__ import annotations

import contextlib

import torch

from teachers.llamagen.gpt import GPT, KVCache
from teachers.protocol import SamplingConfig, check_tokens
from teachers.sampling import filter_logits


def cfg_active(token_index: int, cfg_interval: float) -> bool:
    """Whether image token ``token_index`` (0-based) is guided under the official rule."""
    if token_index == 0:
        return True
    return not (cfg_interval > -1 and token_index - 1 > cfg_interval)


def guided_log_probs(
    logits_XV: torch.Tensor, token_index: int, sampling: SamplingConfig
) -> torch.Tensor:
    """Raw logits (``[cond; null]`` = ``[2B, V]`` if guided, else ``[B, V]``) -> ``[B, V]``."""
    logits_XV = logits_XV.float()
    if sampling.uses_cfg:
        cond_BV, uncond_BV = logits_XV.chunk(2, dim=0)
        if cfg_active(token_index, sampling.cfg_interval):
            logits_BV = uncond_BV + (cond_BV - uncond_BV) * sampling.cfg_scale
        else:
            logits_BV = cond_BV
    else:
        logits_BV = logits_XV
    logits_BV = filter_logits(
        logits_BV / sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p
    )
    return torch.log_softmax(logits_BV, dim=-1)


def compute_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (the official sampler runs in bf16); full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LlamaGenSession:
    """One AR pass over ``labels [B]``; use as a context manager so the KV cache is freed."""

    def __init__(self, gpt: GPT, labels: torch.Tensor, sampling: SamplingConfig):
        """Made by ``LlamaGenTeacher.start``, which checks ``labels`` and ``sampling``."""
        config = gpt.config
        self._gpt, self._sampling = gpt, sampling
        self._device = gpt.tok_embeddings.weight.device
        labels = labels.to(self._device)
        self._batch_size = labels.shape[0]
        if sampling.uses_cfg:
            labels = torch.cat([labels, torch.full_like(labels, config.num_classes)])
        self._model_labels = labels  # [B] or [cond; null] = [2B]
        self._num_tokens = config.block_size
        self._cache: KVCache | None = gpt.new_kv_cache()
        self._cached_positions = 0  # sequence positions (class token included) already in the cache
        self._pending: list[torch.Tensor] = []  # accepted tokens [X, 1] not yet run
        self._step = 0
        self._log_probs: torch.Tensor | None = None
        self._last_logits: torch.Tensor | None = None  # raw logits [X, V] predicting token `step`

    @property
    def step(self) -> int:
        return self._step

    @property
    def num_steps(self) -> int:
        return self._num_tokens

    def __enter__(self) -> LlamaGenSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache = None
        self._pending = []
        self._log_probs = self._last_logits = None

    def _check_open(self) -> None:
        if self._cache is None:
            raise RuntimeError("this LlamaGen session is closed")

    @torch.no_grad()
    def _run_pending(self) -> None:
        """Feed the class token (first call) and every pending token through the model."""
        gpt = self._gpt
        pending = torch.cat(self._pending, dim=1) if self._pending else None  # [X, T]
        with compute_autocast(self._device):
            if self._cached_positions == 0:
                h_XTD = gpt.embed(self._model_labels, pending)
            else:
                h_XTD = gpt.tok_embeddings(pending)
            h_XTD = gpt.transformer(h_XTD, start=self._cached_positions, cache=self._cache)
            self._last_logits = gpt.head(h_XTD[:, -1])
        self._cached_positions += h_XTD.shape[1]
        self._pending = []

    def next_log_probs(self) -> torch.Tensor:
        """Guided log-probs ``[B, 1, V]`` of token ``step`` (float32, ``-inf`` = filtered)."""
        self._check_open()
        if self._step >= self._num_tokens:
            raise RuntimeError(f"all {self._num_tokens} tokens have been accepted")
        if self._log_probs is None:
            if self._last_logits is None:
                self._run_pending()
            self._log_probs = guided_log_probs(self._last_logits, self._step, self._sampling)[
                :, None
            ]
        return self._log_probs

    def accept(self, tokens: torch.Tensor) -> None:
        """Feed the tokens ``[B, 1]`` chosen for the current step."""
        self._check_open()
        if self._step >= self._num_tokens:
            raise RuntimeError(f"all {self._num_tokens} tokens have been accepted")
        check_tokens(tokens, self._gpt.config.vocab_size, length=1, batch_size=self._batch_size)
        tokens_B1 = tokens.to(self._device, torch.long)
        if self._sampling.uses_cfg:
            tokens_B1 = torch.cat([tokens_B1, tokens_B1])  # both halves get the chosen token
        self._pending.append(tokens_B1)
        self._step += 1
        self._log_probs = self._last_logits = None
