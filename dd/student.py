"""The DD student: one module for every family (paper Sec. 3.3, Eq. 6).

The family builds the trunk and both heads from its own modules
(``Teacher.student_backbone``); this module adds what is the same for every family: the input
of AR step ``k`` (Eq. 5, ``dd.trajectory``), the noise/data flags, and Eq. 6 (positions before
the step are returned as given). Nothing here depends on the family.
"""

from __future__ import annotations

import torch
from torch import nn

from dd.trajectory import apply_prefix, data_mask
from teachers.protocol import Teacher, check_labels, check_tokens


class DDStudent(nn.Module):
    """``F(X_k, k)``: from the trajectory input of AR step ``k`` to the whole token sequence.

    ``forward(labels [B], inputs [B, n, C], boundary [B], prefix_tokens [B, n])`` ->
    ``(logits [B, n, V] float32, embeddings [B, n, C] float32)``; ``boundary`` is the first token
    of each sample's AR step (``geometry.step_ranges[k][0]``), ``prefix_tokens`` the tokens of the
    inputs before it (other entries are ignored).
    """

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.geometry = teacher.geometry
        self.num_classes = teacher.num_classes
        self.vocab_size, self.code_dim = teacher.codebook.shape
        self.backbone = teacher.student_backbone()

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
