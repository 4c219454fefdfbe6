"""Few-step sampling with a DD student (paper Alg. 3): pure functions, randomness injected.

Alg. 3: draw the noise sequence once; at each chosen timestep ``k_j`` (a subset of the training
timesteps starting at the first) the input is the tokens predicted so far before step ``k_j``'s
boundary and *the same original noise* after it; the student predicts the whole sequence.
Tokens before ``split_token`` come from the logits head (argmax), the others from the embedding
head (nearest codebook entry).

Noise is seeded per sample: sample ``i`` of a call gets ``sample_seed(base, i)`` with ``base``
drawn once from ``generator``, so sample ``i``'s image does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from data_gen.pairs import sample_seed
from dd.student import DDStudent
from dd.trajectory import trajectory_input
from teachers.protocol import ContinuousTeacher, SamplingConfig, check_labels
from teachers.sampling import sample_from_log_probs

SEED_BITS = 62


def draw_noise(
    num_samples: int, num_tokens: int, code_dim: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``[num_samples, n, C]`` standard normal noise, one seeded stream per sample index."""
    base = int(torch.randint(2**SEED_BITS, (1,), generator=generator))
    noise = [
        torch.randn(
            num_tokens, code_dim, generator=torch.Generator().manual_seed(sample_seed(base, index))
        )
        for index in range(num_samples)
    ]
    return torch.stack(noise) if noise else torch.zeros(0, num_tokens, code_dim)


def resolve_steps(student: DDStudent, steps: int | Sequence[int]) -> tuple[int, ...]:
    """``steps=m``: the first ``m`` training timesteps; or an explicit subset of them."""
    trained = student.timesteps
    if isinstance(steps, int):
        if not 1 <= steps <= len(trained):
            raise ValueError(
                f"steps={steps}: this student was trained for timesteps {trained}, so 1 to "
                f"{len(trained)} steps are possible"
            )
        return trained[:steps]
    chosen = tuple(int(k) for k in steps)
    unknown = [k for k in chosen if k not in trained]
    if not chosen or unknown or chosen[0] != trained[0] or list(chosen) != sorted(set(chosen)):
        raise ValueError(
            f"steps {chosen}: give increasing AR step indices among the trained timesteps "
            f"{trained}, starting at {trained[0]} (Alg. 3)"
        )
    return chosen


def nearest_codes(embeddings_BNC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (L2) of every embedding -> ``[B, n]``."""
    codes = codebook_VC.to(embeddings_BNC.dtype)
    # ||e - c||^2 = ||e||^2 - 2 e.c + ||c||^2; the first term does not change the argmin.
    scores_BNV = embeddings_BNC @ codes.T - 0.5 * codes.square().sum(-1)
    return scores_BNV.argmax(-1)


def choose_tokens(
    student: DDStudent, logits_BNV: torch.Tensor, embeddings_BNC: torch.Tensor
) -> torch.Tensor:
    """Tokens from both heads: logits argmax before ``split_token``, nearest code from it."""
    tokens_BN = nearest_codes(embeddings_BNC, student.teacher.codebook)
    split = student.split_token
    tokens_BN[:, :split] = logits_BNV[:, :split].argmax(-1)
    return tokens_BN


def dd_step(
    student: DDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    tokens_BN: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """One DD step from AR step ``step``: the kept prefix of ``tokens_BN`` before its boundary
    and the original noise after it (Alg. 3) -> the whole predicted sequence. Positions before
    the boundary come back as given (Eq. 6)."""
    codebook = student.teacher.codebook
    boundary_B = torch.full(
        (labels.shape[0],), student.geometry.step_ranges[step][0], device=codebook.device
    )
    inputs = trajectory_input(noise_BNC, tokens_BN, codebook, boundary_B)
    logits, embeddings = student(labels, inputs, boundary_B, tokens_BN)
    return choose_tokens(student, logits, embeddings)


@torch.no_grad()
def sample_tokens(
    student: DDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    steps: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Alg. 3 from given noise -> tokens ``[B, n]`` (long)."""
    check_labels(labels, student.num_classes)
    timesteps = resolve_steps(student, steps)
    teacher, geometry = student.teacher, student.geometry
    device = teacher.codebook.device
    labels, noise_BNC = labels.to(device), noise_BNC.to(device)
    batch = labels.shape[0]
    tokens_BN = torch.zeros(batch, geometry.num_tokens, dtype=torch.long, device=device)
    for step in timesteps:
        tokens_BN = dd_step(student, labels, noise_BNC, tokens_BN, step)
    return tokens_BN


def check_teacher_range(student: DDStudent, teacher_steps: tuple[int, int]) -> tuple[int, int]:
    """``[first, second)`` AR steps the teacher regenerates (Alg. 4): ``second`` must be a
    trained timestep after the first, and ``0 <= first < second``."""
    first, second = (int(k) for k in teacher_steps)
    later = student.timesteps[1:]
    if second not in later or not 0 <= first < second:
        raise ValueError(
            f"teacher_steps {tuple(teacher_steps)}: give [first, second) with second one of the "
            f"trained timesteps after the first {list(later)} and 0 <= first < second "
            f"(the teacher has AR steps 0..{student.geometry.num_steps - 1})"
        )
    return first, second


@torch.no_grad()
def sample_tokens_interleaved(
    student: DDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    teacher_steps: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    sampling: SamplingConfig | None = None,
) -> torch.Tensor:
    """Alg. 4: DD step 1, snap to the codebook, the teacher regenerates AR steps
    ``[first, second)`` after the kept prefix (KV-cached session, multinomial draws from
    ``generator``), then DD step 2 from timestep ``second``."""
    first, second = check_teacher_range(student, teacher_steps)
    tokens_BN = sample_tokens(student, labels, noise_BNC, steps=1)
    teacher, geometry = student.teacher, student.geometry
    with teacher.start(labels, sampling) as session:
        for step in range(second):
            start, end = geometry.step_ranges[step]
            log_probs = session.next_log_probs()
            if step >= first:
                drawn = sample_from_log_probs(log_probs, generator).to(tokens_BN.device)
                tokens_BN[:, start:end] = drawn
            session.accept(tokens_BN[:, start:end])
    device = tokens_BN.device
    return dd_step(student, labels.to(device), noise_BNC.to(device), tokens_BN, second)


@torch.no_grad()
def sample(
    student: DDStudent,
    labels: torch.Tensor,
    *,
    steps: int | Sequence[int] = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` from ``steps`` DD steps (Alg. 3)."""
    if isinstance(student.teacher, ContinuousTeacher):  # no codebook (#13): dd.continuous_sampling
        from dd.continuous_sampling import sample as sample_continuous

        return sample_continuous(student, labels, steps=steps, generator=generator)
    noise = draw_noise(labels.shape[0], student.geometry.num_tokens, student.code_dim, generator)
    tokens = sample_tokens(student, labels, noise, steps)
    return student.teacher.decode_tokens(tokens)
