"""Few-step sampling with a DD student (paper Alg. 3 and 4): pure functions, randomness injected.

Alg. 3: draw the noise sequence once; at each chosen timestep ``k_j`` (a subset of the training
timesteps starting at the first) the input is the tokens predicted so far before step ``k_j``'s
boundary and *the same original noise* after it; the student predicts the whole sequence.
Tokens before ``split_token`` come from the logits head (argmax), the others from the embedding
head (nearest codebook entry).

Alg. 4 (``interleave``, ``dd.interleave``): after DD step 1 the teacher regenerates a range of
AR steps through its KV-cached session, then DD step 2.

Randomness is seeded per sample: sample ``i`` of a call gets ``sample_seed(base, i)`` with
``base`` drawn once from ``generator`` (``stream_base``: never the seed itself, which would
replay the pairs' noise); its noise and its per-token uniforms (the teacher's
draws, by inverse CDF) come from that stream, so sample ``i``'s image does not depend on the
batch size.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from data_gen.pairs import sample_seed
from dd.compute import autocast_off
from dd.interleave import check_interleave
from dd.student import DDStudent
from dd.trajectory import trajectory_input
from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    SamplingConfig,
    check_labels,
)
from teachers.sampling import sample_from_uniforms

SEED_BITS = 62


@dataclass(frozen=True)
class SampleRandomness:
    """All the randomness of a batch: ``noise [B, n, C]`` (DD's input) and ``uniforms [B, n]``
    in ``[0, 1)`` (one per token, for every draw of a token from a distribution: the teacher's
    steps, skip-n, onestep*)."""

    noise_BNC: torch.Tensor
    uniforms_BN: torch.Tensor


def draw_randomness(
    num_samples: int, num_tokens: int, code_dim: int, generator: torch.Generator | None
) -> SampleRandomness:
    """One seeded stream per sample index: ``base`` is drawn once from ``generator``, sample
    ``i`` draws its noise, then its uniforms, from ``sample_seed(base, i)``."""
    return randomness_at(stream_base(generator), range(num_samples), num_tokens, code_dim)


def stream_base(generator: torch.Generator | None) -> int:
    """The base of a call's per-sample streams, drawn from ``generator``: never a run's seed
    itself. Pair generation gives sample ``i`` of seed ``s`` the stream ``sample_seed(s, i)``
    (``data_gen.pairs.draw_sample``: a label draw, then the noise), so streams based at ``s``
    would replay the training pairs' noise: 7 of every 8 values, one position over.
    Drawn on the generator's device (a CUDA generator gives another base than a CPU one of the
    same seed; the per-sample streams themselves are CPU streams, the same on every device)."""
    where = None if generator is None else generator.device
    return int(torch.randint(2**SEED_BITS, (1,), generator=generator, device=where))


def seed_base(seed: int) -> int:
    """``stream_base`` of a generator seeded with ``seed``: ``dd eval``, ``dd sample`` and
    ``dd demo`` with ``seed`` draw what ``dd.sample(..., generator=manual_seed(seed))`` draws."""
    return stream_base(torch.Generator().manual_seed(seed))


def randomness_at(
    base: int, indices: Sequence[int], num_tokens: int, code_dim: int
) -> SampleRandomness:
    """The randomness of samples ``indices`` of the stream family ``base`` (so a long run can
    draw it batch by batch: sample ``i`` is the same whichever batch holds it)."""
    noise, uniforms = [], []
    for index in indices:
        stream = torch.Generator().manual_seed(sample_seed(base, index))
        noise.append(torch.randn(num_tokens, code_dim, generator=stream))
        uniforms.append(torch.rand(num_tokens, generator=stream))
    if not noise:
        return SampleRandomness(torch.zeros(0, num_tokens, code_dim), torch.zeros(0, num_tokens))
    return SampleRandomness(torch.stack(noise), torch.stack(uniforms))


def draw_noise(
    num_samples: int, num_tokens: int, code_dim: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``[num_samples, n, C]`` standard normal noise, one seeded stream per sample index."""
    return draw_randomness(num_samples, num_tokens, code_dim, generator).noise_BNC


def resolve_steps(student: DDStudent, steps: int | Sequence[int]) -> tuple[int, ...]:
    """``steps=m``: the first ``m`` training timesteps; or an explicit subset of them."""
    trained = student.timesteps
    if isinstance(steps, (bool, str, float)):  # True would be read as 1, "12" as (1, 2)
        raise TypeError(f"steps={steps!r}: give a count (int) or a sequence of AR step indices")
    if isinstance(steps, int):
        if not 1 <= steps <= len(trained):
            raise ValueError(
                f"steps={steps}: this student was trained for timesteps {trained}, so 1 to "
                f"{len(trained)} steps are possible"
            )
        return trained[:steps]
    chosen = tuple(steps)
    if any(isinstance(k, (bool, float)) for k in chosen):  # int() would read 1.5 as 1
        raise TypeError(f"steps={steps!r}: AR step indices are integers")
    chosen = tuple(operator.index(k) for k in chosen)  # also numpy and 0-dim tensor ints
    unknown = [k for k in chosen if k not in trained]
    if not chosen or unknown or chosen[0] != trained[0] or list(chosen) != sorted(set(chosen)):
        raise ValueError(
            f"steps {chosen}: give increasing AR step indices among the trained timesteps "
            f"{trained}, starting at {trained[0]} (Alg. 3)"
        )
    return chosen


def nearest_codes(embeddings_BNC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (L2) of every embedding -> ``[B, n]``, in float32 at
    least, autocast or not: in bf16, 2.6% of the nearest codes of LlamaGen-like embeddings
    (16,384 unit-length codes of 8 dims, noise 0.1; ``tests/test_sampling.py``) come out
    wrong (validation runs under ``bf16-mixed``'s autocast)."""
    with autocast_off(embeddings_BNC.device):
        return _nearest_codes(embeddings_BNC, codebook_VC)


def _nearest_codes(embeddings_BNC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(embeddings_BNC.dtype, torch.float32)
    codes_CV = codebook_VC.to(dtype).T.contiguous()
    batch, length, code_dim = embeddings_BNC.shape
    flat_MC = embeddings_BNC.reshape(-1, code_dim).to(dtype)
    # ||e - c||^2 = ||e||^2 - 2 e.c + ||c||^2; the first term does not change the argmin.
    half_norms_V = -0.5 * codes_CV.square().sum(0)
    # Scores in blocks of about 4 MB: one [B * n, V] product is 2x slower on CPU (V = 16,384).
    rows = max(1, (1 << 20) // codes_CV.shape[1])
    chosen = [
        torch.addmm(half_norms_V, flat_MC[start : start + rows], codes_CV).argmax(-1)
        for start in range(0, flat_MC.shape[0], rows)
    ]
    return (
        torch.cat(chosen).view(batch, length)
        if chosen
        else flat_MC.new_zeros(batch, length, dtype=torch.long)
    )


def choose_tokens(
    student: DDStudent, logits_BNV: torch.Tensor, embeddings_BNC: torch.Tensor
) -> torch.Tensor:
    """Tokens from both heads: logits argmax before ``split_token``, nearest code from it (each
    head's ``[B, n, V]`` scores formed only where they choose)."""
    split = student.split_token
    return torch.cat(
        [
            logits_BNV[:, :split].argmax(-1),
            nearest_codes(embeddings_BNC[:, split:], student.teacher.codebook),
        ],
        dim=1,
    )


def dd_step(
    student: DDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    tokens_BN: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """One DD step from AR step ``step``: the kept prefix of ``tokens_BN`` before its boundary
    and the original noise after it (Alg. 3) -> the whole predicted sequence. Positions before
    the boundary come back as given (Eq. 6): their tokens are copied, not re-chosen (the
    nearest code of a code vector is another code when two codebook rows coincide).

    Each head runs only where it chooses (``choose_tokens``' rule): the logits from the
    boundary to ``split_token``, the embeddings from there to the end. The tokens are those of
    the full outputs (``tests/test_sampling.py``)."""
    codebook = student.teacher.codebook
    boundary = student.geometry.step_ranges[step][0]
    split = max(boundary, student.split_token)
    boundary_B = torch.full((labels.shape[0],), boundary, device=codebook.device)
    inputs = trajectory_input(noise_BNC, tokens_BN, codebook, boundary_B)
    logits, embeddings = student(
        labels,
        inputs,
        boundary_B,
        tokens_BN,
        noise_logit_scale=student.sampling_noise_logit_scale,
        logits_tokens=range(boundary, split),
        embedding_tokens=range(split, student.geometry.num_tokens),
    )
    chosen = [tokens_BN[:, :boundary], logits.argmax(-1), nearest_codes(embeddings, codebook)]
    return torch.cat(chosen, dim=1)


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
    labels, noise_BNC = labels.to(device), noise_BNC.to(device, teacher.codebook.dtype)
    batch = labels.shape[0]
    tokens_BN = torch.zeros(batch, geometry.num_tokens, dtype=torch.long, device=device)
    for step in timesteps:
        tokens_BN = dd_step(student, labels, noise_BNC, tokens_BN, step)
    return tokens_BN


@torch.no_grad()
def sample_tokens_interleaved(
    student: DDStudent,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    interleave: str | Sequence[int],
    *,
    uniforms_BN: torch.Tensor,
    sampling: SamplingConfig | None = None,
) -> torch.Tensor:
    """Alg. 4: DD step 1, snap to the codebook, the teacher regenerates AR steps
    ``[first, second)`` after the kept prefix (KV-cached session; the token of position ``j``
    drawn by inverse CDF of ``uniforms_BN[:, j]``), then DD step 2 from timestep ``second``.
    With ``first == 0`` DD step 1 is not run (the teacher regenerates all it would keep)."""
    check_labels(labels, student.num_classes)
    first, second = check_interleave(interleave, student.timesteps, student.geometry.num_steps)
    teacher, geometry = student.teacher, student.geometry
    device = teacher.codebook.device
    labels, noise_BNC = labels.to(device), noise_BNC.to(device, teacher.codebook.dtype)
    if first > 0:
        tokens_BN = sample_tokens(student, labels, noise_BNC, steps=1)
    else:
        tokens_BN = torch.zeros(labels.shape[0], geometry.num_tokens, dtype=torch.long)
        tokens_BN = tokens_BN.to(device)
    with teacher.start(labels, sampling) as session:
        for step in range(second):
            start, end = geometry.step_ranges[step]
            # The kept prefix is only fed: both sessions are lazy and run it in one forward
            # with the first regenerated step (Alg. 4's cost: second - first teacher calls).
            if step >= first:
                log_probs = session.next_log_probs()
                drawn = sample_from_uniforms(log_probs, uniforms_BN[:, start:end])
                tokens_BN[:, start:end] = drawn.to(device)
            session.accept(tokens_BN[:, start:end])
    return dd_step(student, labels, noise_BNC, tokens_BN, second)


def check_float32_weights(student: torch.nn.Module) -> None:
    """Sampling runs float32 weights; half precision is autocast's (``torch.autocast``, or
    ``--precision bf16-mixed`` in dd sample / dd eval), which keeps the code choice, the noise
    and the decoder in float32. A whole-model cast (``student.to(torch.bfloat16)``) failed
    inside the VAR and FAR students with a dtype mismatch of two matrices, and gave bfloat16
    images from the LlamaGen one."""
    for name, tensor in [*student.named_parameters(), *student.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(
                f"the student's weights are {tensor.dtype} ({name}): dd.sample runs float32 "
                "weights; for half precision keep them float32 and sample under torch.autocast "
                "(dd sample / dd eval: --precision bf16-mixed)"
            )


@torch.no_grad()
def sample(
    student: DDStudent,
    labels: torch.Tensor,
    *,
    steps: int | Sequence[int] | None = None,
    interleave: str | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    sampling: SamplingConfig | ContinuousSamplingConfig | None = None,
) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]``.

    - ``steps`` (default 1): DD steps of Alg. 3, a count or a subset of the trained timesteps;
    - ``interleave``: Alg. 4 instead, the teacher regenerating a range of AR steps between DD
      step 1 and DD step 2 (``"pre-trained-n-m"`` as in the paper's Table 2, or a 0-based
      ``(first, second)``; presets: ``dd.interleave.INTERLEAVE_PRESETS``); ``sampling`` is the
      teacher's (``None``: ``student.teacher_sampling``, the settings of the student's pairs,
      and without those the teacher's ``default_sampling()``). ``steps`` must then be unset or
      2.
      A continuous-token teacher regenerates its range from the sample's own noise
      (``dd.continuous_sampling``); a codebook teacher draws it with fresh uniforms.

    Sample ``i``'s randomness is its own seeded stream (``draw_randomness``): the same
    ``generator`` seed gives the same images whatever the batch size.
    """
    if interleave is not None and steps not in (None, 2):
        raise ValueError(
            f"steps={steps!r} with interleave: Alg. 4 runs DD step 1, the teacher, then DD "
            "step 2; leave steps unset (or 2)"
        )
    if isinstance(labels, torch.Tensor) and labels.numel() == 0:  # the models' reshapes fail
        raise ValueError("labels is empty: give at least one class label to sample")
    check_float32_weights(student)
    if sampling is None:  # the settings of the student's pairs (None: the teacher's default)
        sampling = student.teacher_sampling
    if isinstance(student.teacher, ContinuousTeacher):  # no codebook (#13): dd.continuous_sampling
        from dd.continuous_sampling import sample as sample_continuous

        return sample_continuous(
            student,
            labels,
            steps=1 if steps is None else steps,
            interleave=interleave,
            generator=generator,
            sampling=sampling,
        )
    check_labels(labels, student.num_classes)
    geometry = student.geometry
    randomness = draw_randomness(labels.shape[0], geometry.num_tokens, student.code_dim, generator)
    if interleave is None:
        tokens = sample_tokens(student, labels, randomness.noise_BNC, 1 if steps is None else steps)
    else:
        tokens = sample_tokens_interleaved(
            student,
            labels,
            randomness.noise_BNC,
            interleave,
            uniforms_BN=randomness.uniforms_BN,
            sampling=sampling,
        )
    return student.teacher.decode_tokens(tokens)
