"""DD over a continuous-token teacher (FAR-style, issue #13): trajectory, student, loss, system.

A continuous-token teacher (``teachers.protocol.ContinuousTeacher``) has no codebook: a pair is
``(eps [B, n, C], x [B, n, C])``, the head's initial noise of every token and the tokens its
deterministic sampler made of it. DD's pieces carry over with the codebook removed:

- Eq. 5: ``X_k = (x_1 .. x_{b-1}, eps_b .. eps_n)``: the teacher's own tokens before the
  AR-step boundary ``b`` of timestep ``k``, the stored noise from it (``trajectory_input``).
- Eq. 6: the student's outputs before ``b`` are the given inputs (``ContinuousDDStudent``).
- Eq. 7: the loss on the predicted positions: the perceptual distance between the decoded
  predicted tokens and the decoded target tokens (the paper's LPIPS term; the digits
  ``feature_distance`` for the tiny teacher) plus ``token_mse_weight`` times the mean squared
  error of the predicted tokens (``continuous_dd_loss``). There are no logits, so no CE term:
  a recipe must set ``loss.ce_weight: 0`` and ``student.split_token: 0``.

``dd.continuous_distill.ContinuousDistillModule`` is the Lightning system ``dd train`` builds
for such a teacher; ``student_class`` picks the student. Both dispatch on the protocol, never on
a family name. Checkpoints go through ``dd.checkpoint`` unchanged: ``ContinuousDDStudent`` has
the same constructor, ``student_state_dict`` and card fields (``split_token`` 0, no noise-logit
prior) as ``dd.student.DDStudent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dd.losses import LossSettings, PerceptualDistance
from dd.student import DDStudent, student_backbone
from dd.trajectory import check_timesteps, data_mask
from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    check_continuous_tokens,
    check_labels,
)


def trajectory_input(
    noise_BNC: torch.Tensor, tokens_BNC: torch.Tensor, boundary_B: torch.Tensor
) -> torch.Tensor:
    """Eq. 5 for continuous tokens: the tokens before each sample's boundary, its noise after,
    as float32 (float16 noise does not round the given prefix: Eq. 6 returns it exactly)."""
    if noise_BNC.dim() != 3 or tokens_BNC.shape != noise_BNC.shape:
        raise ValueError(
            f"noise and tokens must both be [B, n, C]; got {tuple(noise_BNC.shape)} and "
            f"{tuple(tokens_BNC.shape)}"
        )
    if boundary_B.shape != (noise_BNC.shape[0],):
        raise ValueError(f"boundary must be [B], got {tuple(boundary_B.shape)}")
    is_data_BN1 = data_mask(boundary_B, noise_BNC.shape[1]).unsqueeze(-1)
    return torch.where(is_data_BN1, tokens_BNC.float(), noise_BNC.float())


class ContinuousDDStudent(nn.Module):
    """``F(X_k, k)`` over a continuous-token teacher: ``forward(labels [B], inputs [B, n, C],
    boundary [B]) -> tokens [B, n, C]`` (float32), positions before ``boundary`` returned as
    given (Eq. 6). The backbone is the family's (``ContinuousTeacher.student_backbone``); the
    frozen ``teacher`` is held for decoding and never saved with the student.

    ``split_token``, ``noise_logit_scale`` and ``sampling_noise_logit_scale`` exist for
    ``DDStudent``'s signature (checkpoint cards): every position comes from the embedding head,
    so they must be 0, ``None`` and ``None``. ``teacher_sampling``: as ``DDStudent``'s.
    """

    teacher_sampling: ContinuousSamplingConfig | None = None

    def __init__(
        self,
        teacher: ContinuousTeacher,
        timesteps: Sequence[int],
        split_token: int = 0,
        noise_logit_scale: float | None = None,
        sampling_noise_logit_scale: float | None = None,
        backbone_options: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(teacher, ContinuousTeacher):
            raise ValueError(f"{type(teacher).__name__} is not a continuous-token teacher")
        if split_token != 0:
            raise ValueError(
                f"split_token must be 0 for a continuous-token teacher (no logits head: every "
                f"position comes from the embedding head), got {split_token}"
            )
        if noise_logit_scale is not None or sampling_noise_logit_scale is not None:
            raise ValueError("a continuous-token teacher has no codebook: no noise-logit prior")
        self.geometry = teacher.geometry
        self.timesteps = check_timesteps(timesteps, teacher.geometry)
        self.split_token, self.noise_logit_scale, self.sampling_noise_logit_scale = 0, None, None
        self.num_classes = teacher.num_classes
        self.code_dim = teacher.token_dim
        self.teacher = teacher
        self.backbone_options = dict(backbone_options or {})
        self.backbone = student_backbone(teacher, self.backbone_options)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen teacher."""
        return [p for p in self.parameters() if p.requires_grad]

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        return self.backbone.state_dict()

    def load_student_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.backbone.load_state_dict(state, strict=True)

    def forward(
        self, labels_B: torch.Tensor, inputs_BNC: torch.Tensor, boundary_B: torch.Tensor
    ) -> torch.Tensor:
        n = self.geometry.num_tokens
        check_labels(labels_B, self.num_classes)
        batch = labels_B.shape[0]
        check_continuous_tokens(
            inputs_BNC, self.code_dim, length=n, batch_size=batch, name="inputs"
        )
        if boundary_B.shape != labels_B.shape:
            raise ValueError(
                f"boundary {tuple(boundary_B.shape)} must be [B] like labels "
                f"{tuple(labels_B.shape)}"
            )
        if boundary_B.dtype.is_floating_point or boundary_B.dtype == torch.bool:
            raise ValueError(f"boundary must be integer token positions, got {boundary_B.dtype}")
        if bool(((boundary_B < 0) | (boundary_B > n)).any()):
            raise ValueError(f"boundary must be in [0, {n}], got {boundary_B.tolist()}")
        device = self.teacher.device
        labels_B, inputs_BNC = labels_B.to(device, torch.long), inputs_BNC.to(device, torch.float32)
        is_data_BN = data_mask(boundary_B.to(device), n)
        embeddings_BTC = self.backbone(labels_B, inputs_BNC, is_data_BN)
        # Position 0 is the class position; i + 1 predicts token i. Eq. 6: the prefix as given.
        return torch.where(is_data_BN.unsqueeze(-1), inputs_BNC, embeddings_BTC[:, 1:])


def predicted_token_mse(
    predicted_BNC: torch.Tensor, target_BNC: torch.Tensor, boundary_B: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over the predicted positions (``>= boundary``) and channels of every
    sample, then over the batch (each sample weighs the same, lambda(t) = 1)."""
    squared_BN = (predicted_BNC.float() - target_BNC.float()).square().mean(-1)
    predicted_BN = ~data_mask(boundary_B, predicted_BNC.shape[1])
    per_sample_B = torch.where(predicted_BN, squared_BN, 0.0).sum(1)
    return (per_sample_B / predicted_BN.sum(1).clamp_min(1)).mean()


@dataclass(frozen=True)
class ContinuousLossTerms:
    total: torch.Tensor
    token_mse: torch.Tensor
    perceptual: torch.Tensor


def continuous_dd_loss(
    teacher: ContinuousTeacher,
    predicted_BNC: torch.Tensor,
    target_BNC: torch.Tensor,
    boundary_B: torch.Tensor,
    perceptual: PerceptualDistance,
    *,
    perceptual_weight: float,
    token_mse_weight: float,
) -> ContinuousLossTerms:
    """Eq. 7 for continuous tokens: ``perceptual_weight * d(decode(pred), decode(target)) +
    token_mse_weight * MSE(pred, target)`` on the predicted positions (``predicted`` holds the
    target before the boundary, Eq. 6). No clamping on the gradient path (the decoder's clamp is
    straight-through)."""
    token_mse = predicted_token_mse(predicted_BNC, target_BNC, boundary_B)
    predicted_images = teacher.decode_embeddings(predicted_BNC)
    with torch.no_grad():
        target_images = teacher.decode_tokens(target_BNC)
    perceptual_term = perceptual(predicted_images, target_images).mean()
    total = perceptual_weight * perceptual_term + token_mse_weight * token_mse
    return ContinuousLossTerms(total, token_mse.detach(), perceptual_term.detach())


def check_loss_settings(teacher: object, loss: LossSettings) -> None:
    """Refuse a loss term the teacher's student cannot have instead of ignoring it: a
    continuous-token teacher has no logits (no CE term), a codebook teacher's student has
    logits and codes and no token MSE term (``dd.losses.dd_loss``)."""
    if not isinstance(teacher, ContinuousTeacher):
        if loss.token_mse_weight != 0:
            raise ValueError(
                f"loss.token_mse_weight is {loss.token_mse_weight}: the token MSE term is for "
                "continuous-token teachers only; set it to 0 for a codebook teacher"
            )
        return
    for key in ("ce_weight", "teacher_kl_weight", "cache_teacher_kl_targets"):
        if getattr(loss, key):
            raise ValueError(
                f"loss.{key} is {getattr(loss, key)}, but a continuous-token teacher has no "
                f"logits (no CE or teacher-KL term): set loss.{key}: "
                f"{'false' if key.startswith('cache') else 0} (and weigh "
                "loss.token_mse_weight instead)"
            )
    if loss.perceptual_weight == 0 and loss.token_mse_weight == 0:
        raise ValueError(
            "loss.perceptual_weight and loss.token_mse_weight are 0: the loss is 0 and the "
            "student would learn nothing; give either term a weight"
        )


def student_class(teacher: object) -> type[DDStudent] | type[ContinuousDDStudent]:
    """``ContinuousDDStudent`` for a continuous-token teacher, else ``DDStudent`` (same
    constructor). Dispatches on the protocol, never on a family name."""
    return ContinuousDDStudent if isinstance(teacher, ContinuousTeacher) else DDStudent
