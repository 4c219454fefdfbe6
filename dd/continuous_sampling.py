"""Few-step sampling with a DD student over a continuous-token teacher (Alg. 3), and the
``onestep*`` reference for continuous tokens. Pure functions; randomness injected.

Alg. 3 unchanged but for the codebook: draw the noise once (per-sample seeded,
``dd.sampling.draw_noise``: sample ``i``'s image does not depend on the batch size); at each
chosen timestep the input is the tokens predicted so far before its boundary and *the same
original noise* after it; the student's embedding output is the next step's data tokens as is
(no nearest-code snap). ``dd.sample`` dispatches here for a ``ContinuousTeacher``.

``independent_token_sampler``: DD's ``onestep*`` (paper Prop. 3.1, FACTS.md section 1) for
continuous tokens: every position of a sample of class ``c`` is drawn independently and
uniformly from the set of the teacher's tokens at that position over the pairs of class ``c``
(the empirical per-class, per-position marginal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dd.continuous import ContinuousDDStudent, trajectory_input
from dd.sampling import draw_noise, resolve_steps
from teachers.protocol import check_continuous_tokens, check_labels


@torch.no_grad()
def sample_tokens(
    student: ContinuousDDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    steps: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Alg. 3 from given noise -> tokens ``[B, n, C]`` (float32)."""
    check_labels(labels, student.num_classes)
    n = student.geometry.num_tokens
    batch = labels.shape[0]
    check_continuous_tokens(noise_BNC, student.code_dim, length=n, batch_size=batch, name="noise")
    timesteps = resolve_steps(student, steps)
    device = student.teacher.device
    labels, noise_BNC = labels.to(device), noise_BNC.to(device, torch.float32)
    tokens_BNC = torch.zeros_like(noise_BNC)
    for step in timesteps:
        boundary_B = torch.full((batch,), student.geometry.step_ranges[step][0], device=device)
        inputs = trajectory_input(noise_BNC, tokens_BNC, boundary_B)
        tokens_BNC = student(labels, inputs, boundary_B)
    return tokens_BNC


@torch.no_grad()
def sample(
    student: ContinuousDDStudent,
    labels: torch.Tensor,
    *,
    steps: int | Sequence[int] = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` from ``steps`` DD steps (Alg. 3)."""
    check_labels(labels, student.num_classes)
    noise = draw_noise(labels.shape[0], student.geometry.num_tokens, student.code_dim, generator)
    return student.teacher.decode_tokens(sample_tokens(student, labels, noise, steps))


def independent_token_sampler(
    tokens_NnC: torch.Tensor,
    token_labels_N: torch.Tensor,
    labels_M: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``onestep*`` for continuous tokens -> ``[M, n, C]``: position ``i`` of sample ``m`` is
    ``tokens[j, i]`` for ``j`` drawn uniformly (independently for every ``(m, i)``) among the
    rows whose label is ``labels[m]``."""
    if tokens_NnC.dim() != 3 or token_labels_N.shape != tokens_NnC.shape[:1]:
        raise ValueError(
            f"tokens must be [N, n, C] with labels [N]; got {tuple(tokens_NnC.shape)} and "
            f"{tuple(token_labels_N.shape)}"
        )
    num_tokens = tokens_NnC.shape[1]
    out = torch.empty(labels_M.shape[0], num_tokens, tokens_NnC.shape[2], dtype=tokens_NnC.dtype)
    for label in labels_M.unique().tolist():
        pool = (token_labels_N == label).nonzero().flatten()
        if pool.numel() == 0:
            raise ValueError(f"no tokens of class {label} to draw onestep* samples from")
        rows_M = (labels_M == label).nonzero().flatten()
        picks_Mn = torch.randint(pool.numel(), (rows_M.numel(), num_tokens), generator=generator)
        positions_Mn = torch.arange(num_tokens).expand_as(picks_Mn)
        out[rows_M] = tokens_NnC[pool[picks_Mn], positions_Mn]
    return out
