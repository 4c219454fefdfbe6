"""The DD trajectory and its prefix rule (paper Sec. 3.3, Eq. 5-7): pure tensor functions.

A pair is ``(eps [B, n, C], q [B, n])``: the noise tokens and the tokens AR flow matching mapped
them to. Training timestep ``k`` is an AR step index (0-based, as the released code counts:
LlamaGen ``{0, 80}``, VAR-d16 ``{0, 5}``); it names the token ``boundary`` where step ``k``
starts (``geometry.step_ranges[k][0]``).

- Eq. 5: ``X_k = (c[q_1] .. c[q_{b-1}], eps_b .. eps_n)``, the first ``b`` positions already data.
- Eq. 6: the student's outputs at positions before ``b`` are the input itself.
- Eq. 7: the loss is taken on the positions the student predicts (``>= b``), with
  lambda(t) = 1.

Boundaries are per sample (``[B]``) so one batch mixes timesteps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from teachers.protocol import TokenGeometry


def check_timesteps(timesteps: Sequence[int], geometry: TokenGeometry) -> tuple[int, ...]:
    """Validate training timesteps: distinct, increasing AR step indices starting at 0 (Alg. 3)."""
    steps = tuple(int(k) for k in timesteps)
    num_steps = geometry.num_steps
    if not steps:
        raise ValueError("timesteps: give at least one AR step index (the first must be 0)")
    if steps[0] != 0:
        raise ValueError(
            f"timesteps must start at AR step 0 (Alg. 3 starts from noise), got {steps}"
        )
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly increasing, got {steps}")
    if steps[-1] >= num_steps:
        raise ValueError(
            f"timestep {steps[-1]} is not an AR step boundary: this teacher has {num_steps} AR "
            f"steps (valid indices 0..{num_steps - 1})"
        )
    return steps


def step_boundaries(timesteps: Sequence[int], geometry: TokenGeometry) -> torch.Tensor:
    """Token index where each AR step of ``timesteps`` starts -> ``LongTensor [len(timesteps)]``."""
    steps = check_timesteps(timesteps, geometry)
    return torch.tensor([geometry.step_ranges[k][0] for k in steps], dtype=torch.long)


def data_mask(boundary_B: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[B, n]`` bool, True at positions that are already data (``position < boundary``)."""
    positions_N = torch.arange(num_tokens, device=boundary_B.device)
    return positions_N.unsqueeze(0) < boundary_B.unsqueeze(1)


def trajectory_input(
    noise_BNC: torch.Tensor,
    tokens_BN: torch.Tensor,
    codebook_VC: torch.Tensor,
    boundary_B: torch.Tensor,
) -> torch.Tensor:
    """Eq. 5: codebook vectors of the tokens before each sample's boundary, its noise after."""
    if noise_BNC.dim() != 3 or tokens_BN.shape != noise_BNC.shape[:2]:
        raise ValueError(
            f"noise must be [B, n, C] and tokens [B, n]; got {tuple(noise_BNC.shape)} and "
            f"{tuple(tokens_BN.shape)}"
        )
    if codebook_VC.shape[1] != noise_BNC.shape[2]:
        raise ValueError(
            f"codebook width {codebook_VC.shape[1]} != noise width {noise_BNC.shape[2]}"
        )
    if boundary_B.shape != (noise_BNC.shape[0],):
        raise ValueError(f"boundary must be [B], got {tuple(boundary_B.shape)}")
    codes_BNC = codebook_VC.to(noise_BNC.dtype)[tokens_BN]
    is_data_BN1 = data_mask(boundary_B, noise_BNC.shape[1]).unsqueeze(-1)
    return torch.where(is_data_BN1, codes_BNC, noise_BNC)


def apply_prefix(
    logits_BNV: torch.Tensor,
    embeddings_BNC: torch.Tensor,
    inputs_BNC: torch.Tensor,
    tokens_BN: torch.Tensor,
    boundary_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: before the boundary, logits become the one-hot log-probabilities of the given
    token (0 at the token, -inf elsewhere) and embeddings the given code vector (the input)."""
    is_data_BN = data_mask(boundary_B, logits_BNV.shape[1])
    if not bool(is_data_BN.any()):  # step 1 of a sample: nothing given (saves [B, n, V] passes)
        return logits_BNV, embeddings_BNC
    one_hot_BNV = torch.nn.functional.one_hot(tokens_BN, logits_BNV.shape[-1]).bool()
    dirac_BNV = torch.zeros_like(logits_BNV).masked_fill(~one_hot_BNV, float("-inf"))
    logits = torch.where(is_data_BN.unsqueeze(-1), dirac_BNV, logits_BNV)
    embeddings = torch.where(is_data_BN.unsqueeze(-1), inputs_BNC, embeddings_BNC)
    return logits, embeddings


def predicted_token_cross_entropy(
    logits_BNV: torch.Tensor, target_BN: torch.Tensor, boundary_B: torch.Tensor
) -> torch.Tensor:
    """Eq. 7's CE term: mean over the predicted positions (``>= boundary``) of every sample,
    then over the batch (each sample weighs the same, lambda(t) = 1)."""
    nll_BN = torch.nn.functional.cross_entropy(
        logits_BNV.float().transpose(1, 2), target_BN, reduction="none"
    )
    predicted_BN = ~data_mask(boundary_B, logits_BNV.shape[1])
    per_sample_B = torch.where(predicted_BN, nll_BN, 0.0).sum(1) / predicted_BN.sum(1).clamp_min(1)
    return per_sample_B.mean()
