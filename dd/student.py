"""The DD student: one module for every family (paper Sec. 3.3, Eq. 6).

The family builds the trunk and both heads from its own modules
(``Teacher.student_backbone``); this module adds what is the same for every family: the input
of AR step ``k`` (Eq. 5, ``dd.trajectory``), the noise/data flags, and Eq. 6 (positions before
the step are returned as given). Nothing here depends on the family.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dd.trajectory import apply_prefix, check_timesteps, data_mask
from teachers.protocol import Teacher, check_labels, check_tokens


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
    (FACTS.md section 1; LlamaGen-B 80, LlamaGen-L 130, VAR-d16 the first 5 scales).
    """

    def __init__(self, teacher: Teacher, timesteps: Sequence[int], split_token: int) -> None:
        super().__init__()
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
        self.backbone = teacher.student_backbone()

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights only (the teacher is named by its fingerprint, not copied)."""
        return self.backbone.state_dict()

    def forward(
        self,
        labels_B: torch.Tensor,
        inputs_BNC: torch.Tensor,
        boundary_B: torch.Tensor,
        prefix_tokens_BN: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.geometry.num_tokens
        check_labels(labels_B, self.num_classes)
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
        logits_BTV, embeddings_BTC = self.backbone(labels_B, inputs_BNC, is_data_BN)
        # Position 0 is the family's extra (class / start) position; i + 1 predicts token i.
        return apply_prefix(
            logits_BTV[:, 1:], embeddings_BTC[:, 1:], inputs_BNC, prefix_tokens_BN, boundary_B
        )
