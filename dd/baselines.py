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
  dependencies between tokens can do (paper Prop. 3.1). The frequencies are kept as the pairs'
  sorted tokens (``ClassTokenTable``), never as a dense ``[classes, n, V]`` table.

Every sampler takes per-sample ``uniforms [B, n]`` (``dd.sampling.draw_randomness``), one per
token, and draws the token of position ``j`` by inverse CDF of ``uniforms[:, j]``: the same seed
gives the same images whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    (tests/test_baselines.py) at the cost of one full-sequence forward instead of K steps.
    Settings the teacher's session refuses are refused here too (``check_sampling``)."""
    teacher.check_sampling(sampling)
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
    sampling = sampling or teacher.default_sampling()  # checked before any forward: by the
    # session's start, or by teacher_forcing_log_probs when no session opens (skip_n = K - 1)
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


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type of the table's codes: int16 up to 32,767 codes, else int32."""
    return torch.int16 if vocab_size <= torch.iinfo(torch.int16).max else torch.int32


@dataclass(frozen=True)
class ClassTokenTable:
    """The pairs' tokens of every class, each position's sorted: ``sorted_tokens [N, n]`` holds
    class ``c``'s rows at ``offsets[c] .. offsets[c + 1]``, each column sorted ascending within
    them. Row ``floor(u * N_c)`` of position ``j`` is the inverse CDF at ``u`` of the class's
    token frequencies at ``j`` (``N_c`` pairs of the class), so this table draws what the dense
    ``[num_classes, n, V]`` frequency table would, in ``N * n`` small integers: that table is
    17 GB of float32 for LlamaGen (1000 x 256 x 16384), 11 GB for VAR-d16 (1000 x 680 x 4096)."""

    sorted_tokens: torch.Tensor  # [N, n], int16 (int32 for V > 32767)
    offsets: torch.Tensor  # [num_classes + 1] long
    vocab_size: int

    @classmethod
    def of(
        cls, tokens: torch.Tensor, labels: torch.Tensor, num_classes: int, vocab_size: int
    ) -> ClassTokenTable:
        """From pair tokens ``[N, n]`` and labels ``[N]`` (kept on the CPU); every class needs a
        pair."""
        check_labels(labels, num_classes)  # before bincount, which refuses negative labels
        tokens, labels = tokens.cpu(), labels.cpu()
        counts = torch.bincount(labels, minlength=num_classes)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"every class needs pairs to estimate frequencies from; no pairs of classes "
                f"{missing}"
            )
        grouped = tokens[labels.argsort(stable=True)].to(token_dtype(vocab_size))
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        for first, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            grouped[first:end] = grouped[first:end].sort(dim=0).values
        return cls(grouped, offsets, vocab_size)

    @property
    def num_classes(self) -> int:
        return self.offsets.numel() - 1

    def frequencies(self, label: int) -> torch.Tensor:
        """Class ``label``'s token frequencies ``[n, V]`` (each row sums to 1)."""
        rows = self.sorted_tokens[self.offsets[label] : self.offsets[label + 1]].long()
        counts = torch.zeros(rows.shape[1], self.vocab_size)
        counts.scatter_add_(1, rows.T, torch.ones(rows.T.shape))
        return counts / rows.shape[0]

    def draw(self, labels: torch.Tensor, uniforms_BN: torch.Tensor) -> torch.Tensor:
        """Position ``j`` of sample ``b``: the inverse CDF at ``uniforms[b, j]`` of its class's
        frequencies at ``j`` -> tokens ``[B, n]`` (long)."""
        check_labels(labels, self.num_classes)
        labels = labels.cpu()
        first_B, count_B = self.offsets[labels], self.offsets[labels + 1] - self.offsets[labels]
        # float64: u (float32) * N_c is exact, so floor() is the exact inverse-CDF row.
        picks_BN = (uniforms_BN.cpu().double() * count_B[:, None]).floor().long()
        rows_BN = first_B[:, None] + torch.minimum(picks_BN, count_B[:, None] - 1)
        positions_BN = torch.arange(self.sorted_tokens.shape[1]).expand_as(rows_BN)
        return self.sorted_tokens[rows_BN, positions_BN].long()


def token_table_from_pairs(folder: str | Path, teacher: Teacher) -> ClassTokenTable:
    """The ``ClassTokenTable`` of every pair of a finished pair folder of ``teacher``, read
    shard by shard (the noise is not kept: a pair folder's noise can exceed memory)."""
    from dd.data import pair_records

    vocab_size = teacher.codebook.shape[0]
    labels, tokens = [], []
    for record in pair_records(folder, teacher_fingerprint=teacher.fingerprint()):
        labels.append(record["label"])
        tokens.append(record["tokens"].to(token_dtype(vocab_size)))
    return ClassTokenTable.of(
        torch.stack(tokens), torch.tensor(labels), teacher.num_classes, vocab_size
    )


def onestep_tokens(
    table: ClassTokenTable, labels: torch.Tensor, uniforms_BN: torch.Tensor
) -> torch.Tensor:
    """``onestep*``: tokens ``[B, n]``, position ``j`` drawn from the class's frequencies at
    ``j`` by inverse CDF of ``uniforms_BN[:, j]``."""
    return table.draw(labels, uniforms_BN)


def independent_token_sampler(
    table: ClassTokenTable, labels: torch.Tensor, *, seed: int = 0
) -> torch.Tensor:
    """``onestep*`` with uniforms from one generator seeded ``seed`` (for a fixed label list)."""
    uniforms = torch.rand(labels.shape[0], table.sorted_tokens.shape[1],
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return onestep_tokens(table, labels, uniforms)
