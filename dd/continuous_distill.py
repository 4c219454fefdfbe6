"""Stage 2 on Lightning for a continuous-token teacher (issue #13; paper Alg. 2).

The system composes the plain pieces of ``dd.continuous``: ``trajectory_input`` (Eq. 5),
``ContinuousDDStudent`` (Eq. 6), ``continuous_dd_loss`` (Eq. 7: perceptual + token MSE). Data,
EMA, clipping and checkpoints are ``dd train``'s as for a codebook teacher (``dd.distill``).
"""

from __future__ import annotations

import torch

from dd.continuous import (
    ContinuousDDStudent,
    check_loss_settings,
    continuous_dd_loss,
    trajectory_input,
)
from dd.distill import DistillModule
from dd.losses import LossSettings


class ContinuousDistillModule(DistillModule):
    """DD's training system (Alg. 2) for a continuous-token teacher: ``trajectory_input``
    (Eq. 5), ``ContinuousDDStudent`` (Eq. 6), ``continuous_dd_loss`` (Eq. 7); AdamW (0.9,
    0.95). Validation logs the held-out token MSE and perceptual distance per timestep."""

    logs_perceptual = True  # continuous_dd_loss computes the distance whatever its weight

    @staticmethod
    def check_settings(
        student: ContinuousDDStudent, loss: LossSettings, pair_sampling: object = None
    ) -> None:
        check_loss_settings(student.teacher, loss)  # no teacher-KL term: no logits

    def _loss(self, batch: dict[str, torch.Tensor], boundary_B: torch.Tensor):
        inputs = trajectory_input(batch["noise"], batch["tokens"], boundary_B)
        predicted = self.student(batch["labels"], inputs, boundary_B)
        return continuous_dd_loss(
            self.student.teacher,
            predicted,
            batch["tokens"],
            boundary_B,
            self.perceptual,
            perceptual_weight=self.loss.perceptual_weight,
            token_mse_weight=self.loss.token_mse_weight,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        terms = self._loss(batch, self.boundaries[batch["timestep_choice"]])
        logged = {"loss": terms.total, "token_mse": terms.token_mse, "perceptual": terms.perceptual}
        self.log_dict({f"train/{k}": v.detach() for k, v in logged.items()}, prog_bar=True)
        return logged

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        for choice, step in enumerate(self.student.timesteps):
            boundary_B = self.boundaries[choice].expand(batch["labels"].shape[0])
            terms = self._loss(batch, boundary_B)
            self.log(f"val/token_mse_step{step}", terms.token_mse, sync_dist=True)
            self.log(f"val/perceptual_step{step}", terms.perceptual, sync_dist=True)
