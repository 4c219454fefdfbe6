"""The incremental, KV-cached FAR session (``teachers.protocol.ContinuousTeacherSession``).

With guidance the backbone runs ``[cond; null]`` and both halves receive the accepted tokens;
the head combines the two velocities (``teachers.far.sampling.sample_head``). Accepted tokens
are run lazily, all pending ones in one pass, the next time ``next_tokens`` is called (as the
LlamaGen session), so accepting a given prefix costs one forward.
"""

from __future__ import annotations

import torch

from teachers.far.model import FARCausal, KVCache
from teachers.far.sampling import sample_head
from teachers.protocol import ContinuousSamplingConfig, check_continuous_tokens


class FARSession:
    def __init__(self, model: FARCausal, labels: torch.Tensor, sampling: ContinuousSamplingConfig):
        """Made by ``FARTeacher.start``, which checks ``labels`` and ``sampling``."""
        self._model, self._sampling = model, sampling
        self._device = model.pos_emb.device
        labels = labels.to(self._device)
        self._batch_size = labels.shape[0]
        if sampling.uses_cfg:
            labels = torch.cat([labels, torch.full_like(labels, model.null_class)])
        self._model_labels = labels  # [B] or [cond; null] = [2B]
        self._num_tokens = model.config.num_tokens
        self._cache: KVCache | None = model.new_kv_cache()
        self._cached_positions = 0
        self._pending: list[torch.Tensor] = []
        self._step = 0
        self._z: torch.Tensor | None = None  # condition [X, D] of token `step`

    @property
    def step(self) -> int:
        return self._step

    def __enter__(self) -> FARSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache = None
        self._pending = []
        self._z = None

    def _check_open(self) -> None:
        if self._cache is None:
            raise RuntimeError("this FAR session is closed")
        if self._step >= self._num_tokens:
            raise RuntimeError(f"all {self._num_tokens} tokens have been accepted")

    @torch.no_grad()
    def _run_pending(self) -> None:
        model = self._model
        pending = torch.cat(self._pending, dim=1) if self._pending else None  # [X, T, C]
        labels = self._model_labels if self._cached_positions == 0 else None
        h_XTD = model.embed(labels, pending, start=self._cached_positions)
        h_XTD = model.transformer(h_XTD, cache=self._cache)
        self._z = h_XTD[:, -1]
        self._cached_positions += h_XTD.shape[1]
        self._pending = []

    def next_tokens(self, noise: torch.Tensor) -> torch.Tensor:
        """Token ``step`` ``[B, 1, C]`` from ``noise [B, 1, C]`` (deterministic)."""
        self._check_open()
        dim = self._model.config.token_dim
        check_continuous_tokens(noise, dim, length=1, batch_size=self._batch_size, name="noise")
        if self._z is None:
            self._run_pending()
        z_XD = self._z
        z_cond, z_uncond = z_XD.chunk(2) if self._sampling.uses_cfg else (z_XD, None)
        tokens_BC = sample_head(
            self._model.head,
            noise[:, 0].to(self._device),
            z_cond,
            num_steps=self._sampling.head_steps,
            cfg_scale=self._sampling.cfg_scale,
            z_uncond_ND=z_uncond,
        )
        return tokens_BC[:, None]

    def accept(self, tokens: torch.Tensor) -> None:
        """Feed the tokens ``[B, 1, C]`` chosen for the current step."""
        self._check_open()
        dim = self._model.config.token_dim
        check_continuous_tokens(tokens, dim, length=1, batch_size=self._batch_size)
        tokens_B1C = tokens.to(self._device, torch.float32)
        if self._sampling.uses_cfg:
            tokens_B1C = torch.cat([tokens_B1C, tokens_B1C])
        self._pending.append(tokens_B1C)
        self._step += 1
        self._z = None
