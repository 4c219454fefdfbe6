"""``FrozenTeacher``: what every family's teacher shares, so both keep one contract.

A teacher is a frozen ``nn.Module``: no parameter requires grad and it is always in eval mode.
``train()`` does not unfreeze it: a module that holds a teacher (a Lightning system, a DD
student) can be switched to training mode and the teacher's modules stay in eval mode. A DD
student that trains teacher modules copies them (``copy.deepcopy(teacher.gpt.layers)``) and
switches the copy to training mode. Gradients still flow through ``decode_embeddings`` into
its input, as the LPIPS loss needs.

Every public method checks its inputs the same way (``check_labels``, ``check_tokens``) and
moves them to ``teacher.device``; ``start(labels, sampling=None)`` takes the family's
``default_sampling()`` when no settings are given. A family provides the pieces that differ:
``check_sampling``, ``open_session``, the fingerprint's configs and modules, and the maths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from teachers.fingerprint import ENTRY_NAME_DTYPE_SHAPE, weights_fingerprint
from teachers.protocol import (
    SamplingConfig,
    TeacherSession,
    TokenGeometry,
    check_labels,
    check_tokens,
)


class FrozenTeacher(nn.Module):
    """Base class of ``LlamaGenTeacher`` and ``VARTeacher`` (``teachers.protocol.Teacher``)."""

    family: str
    geometry: TokenGeometry
    num_classes: int
    # State-dict names left out of the fingerprint and the header layout (teachers.fingerprint).
    fingerprint_excluded: frozenset[str] = frozenset()
    fingerprint_entry_format: str = ENTRY_NAME_DTYPE_SHAPE

    # ---- frozen, eval mode
    def freeze(self) -> FrozenTeacher:
        """No parameter requires grad; eval mode. Call at the end of ``__init__``."""
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stays in eval mode whatever ``mode`` is: a teacher has no training behaviour."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- what a family provides
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def code_dim(self) -> int:
        """``C`` of the codebook ``[V, C]`` (the per-token embedding width)."""
        raise NotImplementedError

    def default_sampling(self) -> SamplingConfig:
        raise NotImplementedError

    def check_sampling(self, sampling: SamplingConfig) -> None:
        """Raise a ``ValueError`` for settings this family cannot honour."""

    def open_session(self, labels: torch.Tensor, sampling: SamplingConfig) -> TeacherSession:
        """A session for checked labels already on ``device``."""
        raise NotImplementedError

    def fingerprint_parts(self) -> tuple[Mapping[str, object], Sequence[tuple[str, nn.Module]]]:
        """(configs, ``(prefix, module)`` pairs) that ``fingerprint()`` hashes."""
        raise NotImplementedError

    # ---- the shared contract
    @property
    def null_class(self) -> int:
        return self.num_classes

    def prepare_labels(self, labels: torch.Tensor, *, allow_null: bool = False) -> torch.Tensor:
        """Checked class labels ``[B]`` on ``device`` (``ValueError`` if bad)."""
        check_labels(labels, self.num_classes, allow_null=allow_null)
        return labels.to(self.device, torch.long)  # uint8/int16 labels: embedding lookups need long

    def prepare_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Checked full token sequences ``[B, n]`` (long) on ``device``."""
        check_tokens(tokens, self.vocab_size, length=self.geometry.num_tokens)
        return tokens.to(self.device, torch.long)

    def prepare_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Checked per-token embeddings ``[B, n, C]`` on ``device`` in the weights' dtype (the
        autograd graph kept): float64 or bf16 embeddings decode like float32 ones."""
        n, dim = self.geometry.num_tokens, self.code_dim
        if (
            not isinstance(embeddings, torch.Tensor)
            or embeddings.dim() != 3
            or tuple(embeddings.shape[1:]) != (n, dim)
            or not embeddings.dtype.is_floating_point
        ):
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else embeddings
            raise ValueError(f"embeddings must be float [B, {n}, {dim}], got {shape}")
        return embeddings.to(self.device, next(self.parameters()).dtype)

    def start(self, labels: torch.Tensor, sampling: SamplingConfig | None = None) -> TeacherSession:
        """Open an incremental session for ``labels [B]`` (``None`` = ``default_sampling()``)."""
        sampling = self.default_sampling() if sampling is None else sampling
        if not isinstance(sampling, SamplingConfig):
            raise ValueError(f"sampling must be a SamplingConfig or None, got {sampling!r:.80}")
        self.check_sampling(sampling)
        return self.open_session(self.prepare_labels(labels), sampling)

    def fingerprint(self) -> str:
        """A 16-hex-char sha256 of both configs and every weight (``teachers.fingerprint``),
        computed once; set ``_fingerprint = None`` after changing weights in place."""
        if self._fingerprint is None:
            configs, modules = self.fingerprint_parts()
            self._fingerprint = weights_fingerprint(
                configs,
                modules,
                excluded=self.fingerprint_excluded,
                entry_format=self.fingerprint_entry_format,
            )
        return self._fingerprint
