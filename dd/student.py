"""The DD student: one module for every family (paper Sec. 3.3, Eq. 6).

The family builds the trunk and both heads from its own modules
(``Teacher.student_backbone``); this module adds what is the same for every family: the input
of AR step ``k`` (Eq. 5, ``dd.trajectory``), the noise/data flags, and Eq. 6 (positions before
the step are returned as given). Nothing here depends on the family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dd.compute import autocast_off
from dd.trajectory import apply_prefix, check_timesteps, data_mask
from teachers.protocol import (
    SamplingConfig,
    Teacher,
    add_code_scores_,
    check_labels,
    check_tokens,
    head_positions,
)

NOISE_LOGIT_SCALE_KEY = "noise_logit_scale"


def student_backbone(teacher, options: dict[str, bool]) -> nn.Module:
    """The family's student backbone built with its own keywords (``student.backbone_options``;
    LlamaGen: ``teacher_aligned``); keywords the family does not take are refused."""
    try:
        return teacher.student_backbone(**options)
    except TypeError as error:
        if not options:
            raise
        raise ValueError(
            f"the {teacher.family} student backbone does not take the options {options} ({error})"
        ) from error


class DDStudent(nn.Module):
    """``F(X_k, k)``: from the trajectory input of AR step ``k`` to the whole token sequence.

    ``forward(labels [B], inputs [B, n, C], boundary [B], prefix_tokens [B, n])`` ->
    ``(logits [B, n, V] float32, embeddings [B, n, C] float32)``; ``boundary`` is the first token
    of each sample's AR step (``geometry.step_ranges[k][0]``), ``prefix_tokens`` the tokens of the
    inputs before it (other entries are ignored).

    The student holds its frozen ``teacher`` (for decoding and Alg. 4; never trained, never
    saved with the student: ``student_state_dict``), the training ``timesteps`` (AR step
    indices, 0-based, starting at 0) and ``split_token``: when sampling, positions before it
    take the logits head's argmax and positions from it the embedding head's nearest code
    (DD paper App. B; the released DD code, github.com/imagination-research/distilled-decoding,
    uses LlamaGen-B 80, LlamaGen-L 130, VAR-d16 the first 5 scales).

    ``noise_logit_scale`` (``None``: the paper's student) adds a learned ``kappa * <x_i, c_j>``
    to the logits of token ``i`` from its own input ``x_i`` (the noise that decides it):
    Eq. 3's posterior logits are ``log p_j + t/(1-t)^2 <x, c_j> - ...``, and the one-parameter
    rule ``argmax_j(log p_j + kappa <eps, c_j>)`` reproduces ~88% of the flow map's tokens on
    the tiny teachers (``benchmarks/noise_logit_prior.py``), so the trunk only has to supply
    ``log p``. It is our deviation from the paper, off unless a recipe sets it.

    ``backbone_options``: keywords of the family's ``student_backbone`` (LlamaGen:
    ``teacher_aligned``, the readout; ``{}``: the family's default).

    ``sampling_noise_logit_scale`` (``None``: the learned kappa) replaces the learned kappa when
    sampling (``dd.sample``; training and held-out agreement keep the learned one). CE training
    shrinks kappa where the trunk is unsure of ``log p`` (llamagen-digits: 2.5 -> 1.78), and the
    argmax then follows the noise less than the flow map does: a mode-seeking sampler. The flow
    map's own kappa (``benchmarks/noise_logit_prior.py``, the recipe's initial value) restores it
    (docs/distillation.md, "Sampling kappa").

    ``teacher_sampling``: the teacher's sampling settings of the pairs the student was distilled
    on (set by ``dd train``, kept in the card; ``None``: unknown). Alg. 4's teacher steps draw
    with them unless ``dd.sample`` is given others.
    """

    teacher_sampling: SamplingConfig | None = None

    def __init__(
        self,
        teacher: Teacher,
        timesteps: Sequence[int],
        split_token: int,
        noise_logit_scale: float | None = None,
        sampling_noise_logit_scale: float | None = None,
        backbone_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if sampling_noise_logit_scale is not None and (
            noise_logit_scale is None or not sampling_noise_logit_scale > 0
        ):
            raise ValueError(
                "sampling_noise_logit_scale must be None or a positive number, and needs a "
                f"noise-logit prior (noise_logit_scale); got {sampling_noise_logit_scale} with "
                f"noise_logit_scale {noise_logit_scale}"
            )
        self.sampling_noise_logit_scale = sampling_noise_logit_scale
        self.geometry = teacher.geometry
        self.timesteps = check_timesteps(timesteps, teacher.geometry)
        if not 0 <= split_token <= teacher.geometry.num_tokens:
            raise ValueError(
                f"split_token must be in [0, {teacher.geometry.num_tokens}], got {split_token}"
            )
        self.split_token = split_token
        self.num_classes = teacher.num_classes
        self.vocab_size, self.code_dim = teacher.codebook.shape
        self.teacher = teacher
        # The family's own keywords (LlamaGen: teacher_aligned), kept for the card.
        self.backbone_options = dict(backbone_options or {})
        self.backbone = student_backbone(teacher, self.backbone_options)
        self.noise_logit_scale = (
            None if noise_logit_scale is None else nn.Parameter(torch.tensor(noise_logit_scale))
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen teacher."""
        return [p for p in self.parameters() if p.requires_grad]

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights only (the teacher is named by its fingerprint, not copied)."""
        state = self.backbone.state_dict()
        if self.noise_logit_scale is not None:
            state[NOISE_LOGIT_SCALE_KEY] = self.noise_logit_scale.detach()
        return state

    def load_student_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict inverse of ``student_state_dict``."""
        state = dict(state)
        has_scale = NOISE_LOGIT_SCALE_KEY in state
        if has_scale != (self.noise_logit_scale is not None):
            raise ValueError(
                f"the weights {'have' if has_scale else 'lack'} {NOISE_LOGIT_SCALE_KEY!r} but the "
                f"student was built {'without' if has_scale else 'with'} a noise-logit prior"
            )
        if has_scale:
            with torch.no_grad():
                self.noise_logit_scale.copy_(state.pop(NOISE_LOGIT_SCALE_KEY))
        self.backbone.load_state_dict(state, strict=True)

    def noise_logit_prior(
        self, inputs_BNC: torch.Tensor, noise_logit_scale: float | None = None
    ) -> torch.Tensor:
        """``kappa <x_i, c_j>`` ``[B, n, V]`` (the learned kappa unless one is given), in
        float32 at least, autocast or not, like the in-place prior of ``forward``: the
        teacher-KL path adds it to float32 logits, and under bf16 autocast the product was
        bf16 (up to 0.058 off on 8 llamagen-digits pairs, 1.0% of its argmaxes moved;
        ``tests/test_losses.py``)."""
        if self.noise_logit_scale is None:
            raise ValueError("this student has no noise-logit prior (noise_logit_scale None)")
        dtype = torch.promote_types(inputs_BNC.dtype, torch.float32)
        kappa = self.noise_logit_scale if noise_logit_scale is None else noise_logit_scale
        with autocast_off(inputs_BNC.device):
            codebook_VC = self.teacher.codebook.to(dtype)
            return kappa * (inputs_BNC.to(dtype) @ codebook_VC.T)

    def forward(
        self,
        labels_B: torch.Tensor,
        inputs_BNC: torch.Tensor,
        boundary_B: torch.Tensor,
        prefix_tokens_BN: torch.Tensor,
        *,
        noise_logit_scale: float | None = None,
        logits_tokens: range | None = None,
        embedding_tokens: range | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``noise_logit_scale``: kappa instead of the learned one (the sampler passes
        ``sampling_noise_logit_scale``).

        ``logits_tokens`` / ``embedding_tokens`` (``range`` of token indices; ``None``: all
        ``n``): that head's outputs at those tokens only, ``[B, len(range), V]`` /
        ``[B, len(range), C]``, equal to the full outputs' slices (the heads act token by
        token). Sampling reads each head only where it chooses (``dd.sampling.dd_step``): on
        LlamaGen-B the ``[B, n, V]`` logits are 13% of a forward's multiply-adds, and 16 MB an
        image in float32. A range must not start before a sample's boundary: the prefix is
        given (Eq. 6), there is nothing to compute."""
        n = self.geometry.num_tokens
        check_labels(labels_B, self.num_classes)
        labels_B = labels_B.long()  # uint8/int16 labels: the class embedding needs long
        if inputs_BNC.dim() != 3 or tuple(inputs_BNC.shape[1:]) != (n, self.code_dim):
            raise ValueError(
                f"inputs must be [B, {n}, {self.code_dim}], got {tuple(inputs_BNC.shape)}"
            )
        if boundary_B.shape != labels_B.shape or inputs_BNC.shape[0] != labels_B.shape[0]:
            raise ValueError(
                f"labels {tuple(labels_B.shape)}, boundary {tuple(boundary_B.shape)} and inputs "
                f"{tuple(inputs_BNC.shape)} must share the batch size"
            )
        check_tokens(prefix_tokens_BN, self.vocab_size, length=n, batch_size=labels_B.shape[0])
        is_data_BN = data_mask(boundary_B, n)
        if logits_tokens is None and embedding_tokens is None:
            # Position 0 is the family's extra (class / start) position; i + 1 predicts token i.
            logits_BTV, embeddings_BTC = self.backbone(labels_B, inputs_BNC, is_data_BN)
            logits_BNV, embeddings_BNC = logits_BTV[:, 1:], embeddings_BTC[:, 1:]
            self._add_noise_logit_prior(logits_BNV, inputs_BNC, noise_logit_scale)
            return apply_prefix(
                logits_BNV, embeddings_BNC, inputs_BNC, prefix_tokens_BN, boundary_B
            )
        logits_at = self._tokens_after_prefix(logits_tokens, boundary_B)
        embeddings_at = self._tokens_after_prefix(embedding_tokens, boundary_B)
        logits_BNV, embeddings_BNC = self.backbone(
            labels_B,
            inputs_BNC,
            is_data_BN,
            logits_positions=range(logits_at.start + 1, logits_at.stop + 1),
            embedding_positions=range(embeddings_at.start + 1, embeddings_at.stop + 1),
        )
        self._add_noise_logit_prior(
            logits_BNV, inputs_BNC[:, logits_at.start : logits_at.stop], noise_logit_scale
        )
        return logits_BNV, embeddings_BNC

    def _add_noise_logit_prior(
        self, logits_BNV: torch.Tensor, inputs_BNC: torch.Tensor, noise_logit_scale: float | None
    ) -> None:
        """``logits += kappa <x_i, c_j>`` in place (no second ``[B, n, V]`` tensor); kappa 0
        (the trunk alone) adds nothing."""
        if self.noise_logit_scale is not None and noise_logit_scale != 0.0:
            kappa = self.noise_logit_scale if noise_logit_scale is None else noise_logit_scale
            add_code_scores_(logits_BNV, kappa * inputs_BNC, self.teacher.codebook)

    def _tokens_after_prefix(self, tokens: range | None, boundary_B: torch.Tensor) -> range:
        """``tokens`` (``None``: all), refused unless it starts at or after every boundary."""
        n = self.geometry.num_tokens
        tokens = range(n) if tokens is None else tokens
        head_positions(tokens, n)  # a step-1 range within [0, n]
        if tokens and boundary_B.numel() and tokens.start < int(boundary_B.max()):
            raise ValueError(
                f"head tokens {tokens} start before a boundary ({int(boundary_B.max())}): the "
                "prefix is given (Eq. 6)"
            )
        return tokens
