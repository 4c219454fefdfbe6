"""Few-step sampling with a DD student over a continuous-token teacher (Alg. 3), and the
``onestep*`` reference for continuous tokens. Pure functions; randomness injected.

Alg. 3 unchanged but for the codebook: draw the noise once (per-sample seeded,
``dd.sampling.draw_noise``: sample ``i``'s image does not depend on the batch size); at each
chosen timestep the input is the tokens predicted so far before its boundary and *the same
original noise* after it; the student's embedding output is the next step's data tokens as is
(no nearest-code snap). ``dd.sample`` dispatches here for a ``ContinuousTeacher``.

Alg. 4 (``sample_tokens_interleaved``): DD step 1, then the teacher's KV-cached session
regenerates AR steps ``[first, second)`` after the kept prefix, then DD step 2 from timestep
``second``. The teacher's sampler is the head's deterministic map of noise, so it maps the
sample's *own* noise at those positions: the tokens it makes are the ones on the trajectory
the student was trained on (the pairs are that map of that noise), and ``first == 0`` puts the
teacher's own sample before the boundary (``teachers.sampling.map_continuous_noise`` of the
same noise). The codebook version draws fresh uniforms instead (``dd.sampling``).

``skip_tokens``: the paper's ``skip-n`` baseline for continuous tokens, as ``dd.baselines`` defines
it for codebook teachers: the teacher's session maps the noise of its first ``K - n - 1`` AR
steps, then ONE teacher-forcing pass (``map_noise_teacher_forcing``; zeros stand for the tokens
not yet made, as code 0 does there) maps the noise of every remaining position at once. The
first filled step is exactly the teacher's; the later ones are conditioned on placeholders.

``independent_token_sampler``: DD's ``onestep*`` (DD paper Sec. 5.1 and Prop. 3.1) for
continuous tokens: every position of a sample of class ``c`` is drawn independently and
uniformly from the set of the teacher's tokens at that position over the pairs of class ``c``
(the empirical per-class, per-position marginal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dd.baselines import check_skip_n
from dd.continuous import ContinuousDDStudent, trajectory_input
from dd.interleave import check_interleave
from dd.sampling import draw_noise, resolve_steps
from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    check_continuous_tokens,
    check_labels,
)
from teachers.sampling import map_continuous_noise


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
        tokens_BNC = dd_step(student, labels, noise_BNC, tokens_BNC, step)
    return tokens_BNC


def dd_step(
    student: ContinuousDDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    tokens_BNC: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """One DD step from AR step ``step``: ``tokens_BNC`` before its boundary, the noise after
    it (Eq. 5) -> the whole predicted sequence (positions before the boundary as given)."""
    boundary = student.geometry.step_ranges[step][0]
    boundary_B = torch.full((labels.shape[0],), boundary, device=noise_BNC.device)
    return student(labels, trajectory_input(noise_BNC, tokens_BNC, boundary_B), boundary_B)


@torch.no_grad()
def sample_tokens_interleaved(
    student: ContinuousDDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    interleave: str | Sequence[int],
    *,
    sampling: ContinuousSamplingConfig | None = None,
) -> torch.Tensor:
    """Alg. 4 from given noise -> tokens ``[B, n, C]``: DD step 1 (skipped when ``first == 0``),
    the teacher (``sampling``; ``None``: its default) regenerating AR steps ``[first, second)``
    from the same noise, DD step 2 from timestep ``second`` (module docstring)."""
    check_labels(labels, student.num_classes)
    geometry, teacher = student.geometry, student.teacher
    batch = labels.shape[0]
    check_continuous_tokens(
        noise_BNC, student.code_dim, length=geometry.num_tokens, batch_size=batch, name="noise"
    )
    first, second = check_interleave(interleave, student.timesteps, geometry.num_steps)
    device = teacher.device
    labels, noise_BNC = labels.to(device), noise_BNC.to(device, torch.float32)
    if first > 0:
        tokens_BNC = sample_tokens(student, labels, noise_BNC, steps=1)
    else:
        tokens_BNC = torch.zeros_like(noise_BNC)
    with teacher.start(labels, sampling) as session:
        for step in range(second):
            start, end = geometry.step_ranges[step]
            if step >= first:
                tokens_BNC[:, start:end] = session.next_tokens(noise_BNC[:, start:end])
            session.accept(tokens_BNC[:, start:end])
    return dd_step(student, labels, noise_BNC, tokens_BNC, second)


@torch.no_grad()
def sample(
    student: ContinuousDDStudent,
    labels: torch.Tensor,
    *,
    steps: int | Sequence[int] = 1,
    interleave: str | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    sampling: ContinuousSamplingConfig | None = None,
) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` from ``steps`` DD steps (Alg. 3), or from Alg. 4
    over ``interleave`` with the teacher's ``sampling`` (then ``steps`` is ignored: the caller,
    ``dd.sample``, checks it)."""
    check_labels(labels, student.num_classes)
    noise = draw_noise(labels.shape[0], student.geometry.num_tokens, student.code_dim, generator)
    if interleave is None:
        tokens = sample_tokens(student, labels, noise, steps)
    else:
        tokens = sample_tokens_interleaved(student, labels, noise, interleave, sampling=sampling)
    return student.teacher.decode_tokens(tokens)


@torch.no_grad()
def skip_tokens(
    teacher: ContinuousTeacher,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    skip_n: int,
    sampling: ContinuousSamplingConfig | None = None,
) -> torch.Tensor:
    """``skip-n`` (module docstring) from given noise -> tokens ``[B, n, C]``; ``skip_n = 0`` is
    the teacher's own map of the noise."""
    geometry = teacher.geometry
    num_steps = geometry.num_steps
    check_skip_n(skip_n, num_steps)
    check_labels(labels, teacher.num_classes)
    check_continuous_tokens(
        noise_BNC, teacher.token_dim, length=geometry.num_tokens, batch_size=labels.shape[0],
        name="noise",
    )  # fmt: skip
    sampling = sampling or teacher.default_sampling()
    labels, noise_BNC = labels.to(teacher.device), noise_BNC.to(teacher.device, torch.float32)
    if skip_n == 0:
        return map_continuous_noise(teacher, labels, noise_BNC, sampling)
    incremental_steps = num_steps - skip_n - 1
    cut = geometry.step_ranges[incremental_steps][0]
    tokens_BNC = torch.zeros_like(noise_BNC)  # the placeholders of the parallel pass
    if incremental_steps:
        with teacher.start(labels, sampling) as session:
            for step in range(incremental_steps):
                start, end = geometry.step_ranges[step]
                tokens_BNC[:, start:end] = session.next_tokens(noise_BNC[:, start:end])
                session.accept(tokens_BNC[:, start:end])
    tokens_BNC[:, cut:] = teacher.map_noise_teacher_forcing(
        labels, tokens_BNC, noise_BNC, sampling, start=cut
    )
    return tokens_BNC


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
    num_tokens, device = tokens_NnC.shape[1], tokens_NnC.device
    out = torch.empty(
        labels_M.shape[0], num_tokens, tokens_NnC.shape[2], dtype=tokens_NnC.dtype, device=device
    )
    # drawn where the generator is (torch refuses another device), then moved to the tokens
    draw_device = device if generator is None else generator.device
    labels_M, token_labels_N = labels_M.to(device), token_labels_N.to(device)
    for label in labels_M.unique().tolist():
        pool = (token_labels_N == label).nonzero().flatten()
        if pool.numel() == 0:
            raise ValueError(f"no tokens of class {label} to draw onestep* samples from")
        rows_M = (labels_M == label).nonzero().flatten()
        picks_Mn = torch.randint(
            pool.numel(), (rows_M.numel(), num_tokens), generator=generator, device=draw_device
        ).to(device)
        positions_Mn = torch.arange(num_tokens, device=device).expand_as(picks_Mn)
        out[rows_M] = tokens_NnC[pool[picks_Mn], positions_Mn]
    return out
