"""Family-independent pieces of teacher sampling: logit filtering and the plain AR loop.

The loop is a pure function of (teacher, labels, settings, generator): randomness is
injected, never hidden in the model (STYLE.md).
"""

from __future__ import annotations

import torch

from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    SamplingConfig,
    Teacher,
    check_continuous_tokens,
)


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k, then top-p (nucleus) filtering over the last dim; removed entries become -inf.

    Top-p keeps the smallest set of most likely codes whose probability reaches ``top_p``
    (a code is dropped when the mass of strictly more likely codes already exceeds
    ``top_p``), and always keeps the most likely code. This is LlamaGen's (HF-style) rule;
    VAR's official rule differs only when that mass equals ``top_p`` exactly.
    """
    vocab_size = logits.shape[-1]
    if top_k > 0 and top_k < vocab_size:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        mass_before = cum_probs - sorted_logits.softmax(dim=-1)
        remove_sorted = mass_before > top_p
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_from_log_probs(
    log_probs: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """One multinomial draw per row of ``log_probs [..., V]`` -> indices ``[...]`` (on the
    device of ``log_probs``), drawn where ``generator`` lives: torch refuses a generator of
    another device, and a CPU generator with a teacher on the GPU is the common case."""
    probs = log_probs.float().exp().reshape(-1, log_probs.shape[-1])
    where = probs.device if generator is None else generator.device
    picked = torch.multinomial(probs.to(where), 1, generator=generator).to(probs.device)
    return picked.reshape(log_probs.shape[:-1])


def sample_from_uniforms(log_probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``log_probs [..., V]`` by inverse CDF of given ``uniforms [...]`` in
    ``[0, 1)``: a row's draw depends only on its own uniform, so per-sample seeded uniforms give
    the same tokens whatever the batch size (``dd.sampling.draw_randomness``)."""
    cdf = log_probs.float().exp().cumsum(dim=-1)
    total = cdf[..., -1:]
    # Strictly below the total mass, so rounding never lands past the last code of mass > 0.
    target = torch.minimum(uniforms.to(cdf.device, cdf.dtype)[..., None] * total,
                           torch.nextafter(total, torch.zeros_like(total)))  # fmt: skip
    # The first code whose CDF exceeds the target: codes of probability 0 are never picked.
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def greedy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """The most likely code of every row (the official top_k=1 sampling)."""
    return log_probs.argmax(dim=-1)


@torch.no_grad()
def sample_tokens(
    teacher: Teacher,
    labels: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain AR sampling through the teacher's incremental session -> tokens ``[B, n]``.

    The one plain sampler of every family (images: ``teacher.decode_tokens(tokens)``).
    ``sampling=None`` is the teacher's ``default_sampling()``. One multinomial draw per token
    from ``generator``; ``greedy`` takes the most likely code instead (the official
    ``top_k=1``, as the parity tests check against LlamaGen's ``generate`` and VAR's
    ``autoregressive_infer_cfg``). ``uniforms [B, n]`` (one per token, in ``[0, 1)``) replace
    ``generator`` by inverse-CDF draws (``sample_from_uniforms``): batch-size invariant.
    """
    chosen = []
    with teacher.start(labels, sampling) as session:
        for _ in range(teacher.geometry.num_steps):
            log_probs = session.next_log_probs()
            if greedy:
                tokens = greedy_from_log_probs(log_probs)
            elif uniforms is not None:
                start, end = teacher.geometry.step_ranges[session.step]
                tokens = sample_from_uniforms(log_probs, uniforms[:, start:end])
            else:
                tokens = sample_from_log_probs(log_probs, generator)
            session.accept(tokens)
            chosen.append(tokens)
    return torch.cat(chosen, dim=1)


@torch.no_grad()
def map_continuous_noise(
    teacher: ContinuousTeacher,
    labels: torch.Tensor,
    noise: torch.Tensor,
    sampling: ContinuousSamplingConfig | None = None,
) -> torch.Tensor:
    """A continuous-token teacher's deterministic noise -> token map, ``[B, n, C]`` ->
    ``[B, n, C]``: each AR step's tokens are the head's sampler run from that step's noise,
    then fed back (``teachers.protocol.ContinuousTeacherSession``). Family-independent. The
    whole noise is checked before the first step (``start`` has checked the labels)."""
    chosen = []
    with teacher.start(labels, sampling) as session:
        n, batch = teacher.geometry.num_tokens, labels.shape[0]
        check_continuous_tokens(noise, teacher.token_dim, length=n, batch_size=batch, name="noise")
        for start, end in teacher.geometry.step_ranges:
            tokens = session.next_tokens(noise[:, start:end])
            session.accept(tokens)
            chosen.append(tokens)
    return torch.cat(chosen, dim=1)
