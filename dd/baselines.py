"""The paper's baselines (DD Sec. 5.1, Table 1) and the teacher's own sampler, as pure samplers.

- ``teacher``: the teacher's plain AR sampler (``teachers.sampling.sample_tokens``), every
  AR step through its KV-cached session.
- ``skip-n`` (``K - n`` model calls, as the paper counts them): the teacher's session runs its
  first ``K - n - 1`` AR steps, then ONE parallel forward of the teacher (teacher forcing over
  the whole sequence, guided as its session guides) predicts the tokens of the last ``n + 1``
  steps at once, each *sampled* independently from its position's distribution
  (``fill="argmax"`` takes the most likely code instead). The inputs of positions not yet
  generated are unknown in that forward: they hold ``PLACEHOLDER_CODE``. So the first filled
  step's distribution is exactly the teacher's (its inputs are all real) and the ``n`` later
  ones are conditioned on placeholders, which is what makes the baseline degrade as ``n``
  grows. ``skip_n=0`` skips nothing: the teacher's sampler, draw for draw.
- ``onestep*``: every position drawn independently from the per-class, per-position token
  frequencies of the teacher's data (the pair shards): the best any generator without
  dependencies between tokens can do (paper Prop. 3.1).

Every sampler takes per-sample ``uniforms [B, n]`` (``dd.sampling.draw_randomness``), one per
token, and draws the token of position ``j`` by inverse CDF of ``uniforms[:, j]``: the same seed
gives the same images whatever the batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from teachers.protocol import SamplingConfig, Teacher, check_labels
from teachers.sampling import filter_logits, sample_from_uniforms, sample_tokens

PLACEHOLDER_CODE = 0
Fill = Literal["sample", "argmax"]


@torch.no_grad()
def teacher_tokens(
    teacher: Teacher,
    labels: torch.Tensor,
    uniforms_BN: torch.Tensor,
    sampling: SamplingConfig | None = None,
) -> torch.Tensor:
    """The teacher's own sampler -> tokens ``[B, n]``."""
    return sample_tokens(teacher, labels, sampling, uniforms=uniforms_BN)


def guided_log_probs_all(
    cond_BNV: torch.Tensor,
    uncond_BNV: torch.Tensor | None,
    sampling: SamplingConfig,
    step_of_token: torch.Tensor,
    num_steps: int,
    first_token: int = 0,
) -> torch.Tensor:
    """Log-probabilities of positions ``first_token ..`` (``[B, N, V]`` scores of those
    positions, ``step_of_token [N]`` their AR steps) as the teacher's session forms them
    (``SamplingConfig``'s rules: CFG constant or linear in the AR step, ``cfg_interval`` by the
    token's index in the whole sequence, temperature, top-k, top-p)."""
    logits = cond_BNV.float()
    if uncond_BNV is not None:
        if sampling.cfg_schedule == "linear":
            ramp = sampling.cfg_scale * step_of_token.float() / max(num_steps - 1, 1)
            guided = (1 + ramp[:, None]) * logits - ramp[:, None] * uncond_BNV.float()
        else:
            guided = uncond_BNV.float() + (logits - uncond_BNV.float()) * sampling.cfg_scale
            if sampling.cfg_interval > -1:  # token t >= 1 is guided while t - 1 <= interval
                token_index = first_token + torch.arange(logits.shape[1], device=logits.device)
                unguided = (token_index >= 1) & (token_index - 1 > sampling.cfg_interval)
                guided = torch.where(unguided[:, None], logits, guided)
        logits = guided
    logits = filter_logits(
        logits / sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p
    )
    return logits.log_softmax(dim=-1)


@torch.no_grad()
def teacher_forcing_log_probs(
    teacher: Teacher,
    labels_B: torch.Tensor,
    tokens_BN: torch.Tensor,
    sampling: SamplingConfig,
    first_token: int = 0,
) -> torch.Tensor:
    """The teacher's guided ``log p_i`` ``[B, n - first_token, V]`` of tokens ``first_token ..
    n - 1``, each given the earlier tokens of ``tokens_BN``, in ONE parallel forward (two with
    CFG: the label and the null class), guided as the teacher's session guides
    (``guided_log_probs_all``). Equal to stepping the session through ``tokens_BN``
    (tests/test_baselines.py) at the cost of one full-sequence forward instead of K steps."""
    geometry = teacher.geometry
    batch = labels_B.shape[0]
    guided = sampling.uses_cfg
    forward_labels = (
        torch.cat([labels_B, torch.full_like(labels_B, teacher.null_class)]) if guided else labels_B
    )
    forward_tokens = torch.cat([tokens_BN, tokens_BN]) if guided else tokens_BN
    logits = teacher.logits_teacher_forcing(forward_labels, forward_tokens)[:, first_token:]
    step_of_token = torch.cat(
        [torch.full((end - start,), k) for k, (start, end) in enumerate(geometry.step_ranges)]
    )[first_token:].to(logits.device)
    return guided_log_probs_all(
        logits[:batch],
        logits[batch:] if guided else None,
        sampling,
        step_of_token,
        geometry.num_steps,
        first_token,
    )


def check_skip_n(skip_n: int, num_steps: int) -> None:
    """skip-n skips 0 to ``num_steps - 1`` of the teacher's AR steps (the first always runs)."""
    if not 0 <= skip_n < num_steps:
        raise ValueError(
            f"skip_n={skip_n}: the teacher has {num_steps} AR steps, so 0 to {num_steps - 1} "
            "of them can be skipped (at least the first runs)"
        )


@torch.no_grad()
def skip_tokens(
    teacher: Teacher,
    labels: torch.Tensor,
    uniforms_BN: torch.Tensor,
    skip_n: int,
    sampling: SamplingConfig | None = None,
    *,
    fill: Fill = "sample",
) -> torch.Tensor:
    """``skip-n`` (see the module docstring) -> tokens ``[B, n]``."""
    geometry = teacher.geometry
    num_steps = geometry.num_steps
    check_skip_n(skip_n, num_steps)
    if fill not in ("sample", "argmax"):
        raise ValueError(f"fill must be 'sample' or 'argmax', got {fill!r}")
    check_labels(labels, teacher.num_classes)
    sampling = sampling or teacher.default_sampling()
    if skip_n == 0:
        return teacher_tokens(teacher, labels, uniforms_BN, sampling).cpu()
    incremental_steps = num_steps - skip_n - 1
    cut = geometry.step_ranges[incremental_steps][0]
    tokens_BN = torch.full(
        (labels.shape[0], geometry.num_tokens), PLACEHOLDER_CODE, dtype=torch.long
    )
    if incremental_steps:
        with teacher.start(labels, sampling) as session:
            for step in range(incremental_steps):
                start, end = geometry.step_ranges[step]
                drawn = sample_from_uniforms(session.next_log_probs(), uniforms_BN[:, start:end])
                tokens_BN[:, start:end] = drawn.cpu()
                session.accept(drawn)
    log_probs = teacher_forcing_log_probs(teacher, labels, tokens_BN, sampling, cut)
    if fill == "argmax":
        rest = log_probs.argmax(-1)
    else:
        rest = sample_from_uniforms(log_probs, uniforms_BN[:, cut:])
    tokens_BN[:, cut:] = rest.cpu()
    return tokens_BN


def token_frequencies(
    tokens: torch.Tensor, labels: torch.Tensor, num_classes: int, vocab_size: int
) -> torch.Tensor:
    """Per-class, per-position token frequencies ``[num_classes, n, V]`` (rows sum to 1)."""
    n = tokens.shape[1]
    counts = torch.zeros(num_classes, n, vocab_size)
    positions = torch.arange(n).expand_as(tokens)
    counts.index_put_(
        (labels[:, None].expand_as(tokens), positions, tokens), torch.ones(()), accumulate=True
    )
    totals = counts.sum(-1, keepdim=True)
    if (totals == 0).any():
        missing = sorted({int(c) for c in (totals[:, 0, 0] == 0).nonzero().flatten()})
        raise ValueError(f"no samples of classes {missing} to estimate frequencies from")
    return counts / totals


def frequencies_from_pairs(folder: str | Path, teacher: Teacher) -> torch.Tensor:
    """``token_frequencies`` of every pair in a finished pair folder of ``teacher``."""
    from dd.data import load_pairs

    pairs = load_pairs(folder, teacher_fingerprint=teacher.fingerprint())
    vocab_size = teacher.codebook.shape[0]
    return token_frequencies(pairs.tokens, pairs.labels, teacher.num_classes, vocab_size)


def onestep_tokens(
    frequencies: torch.Tensor, labels: torch.Tensor, uniforms_BN: torch.Tensor
) -> torch.Tensor:
    """``onestep*``: tokens ``[B, n]``, position ``j`` drawn from ``frequencies[label, j]``."""
    check_labels(labels, frequencies.shape[0])
    return sample_from_uniforms(frequencies[labels.cpu()].log(), uniforms_BN)


def independent_token_sampler(
    frequencies: torch.Tensor, labels: torch.Tensor, *, seed: int = 0
) -> torch.Tensor:
    """``onestep*`` with uniforms from one generator seeded ``seed`` (for a fixed label list)."""
    uniforms = torch.rand(labels.shape[0], frequencies.shape[1],
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return onestep_tokens(frequencies, labels, uniforms)
