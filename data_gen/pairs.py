"""What one pair is: per-sample seeding and the AR flow-matching map over a teacher (DD Alg. 1).

Sample ``i`` of a data set is a pure function of (teacher, settings, global seed, i):

- ``draw_sample`` seeds a private ``torch.Generator`` from a hash of (seed, i) and draws the
  label (uniform) and the noise ``[n, C]`` of the whole sequence up front, so nothing depends
  on the batch it lands in, the device count, or restarts (as edm2's per-image seeds);
- ``map_noise`` runs the teacher's KV-cached session step by step: at AR step k the guided
  log-probs ``[B, L_k, V]`` and the step's noise go through ``dd.flow.flow_match_tokens``,
  and the mapped tokens are fed back (Eq. 5: the trajectory turns noise into data one step at
  a time). With ``forced_tokens`` the stored tokens are fed back instead, which is how
  ``dd verify-shards`` re-derives every step's distribution of a stored pair.
"""

from __future__ import annotations

import hashlib

import torch

from data_gen.config import MAX_SEED, FlowSettings, LabelDistribution
from dd.flow import flow_match_tokens
from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    SamplingConfig,
    Teacher,
)
from teachers.sampling import map_continuous_noise

SEED_DOMAIN = b"dd-pairs/v1"  # changing the derivation must change this tag
SEED_BITS = 63
NOISE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
}
INT16_MAX_VOCAB = 2**15  # token ids 0..32767 fit int16
CONTINUOUS_TOKENS_DTYPE = torch.float32  # stored continuous tokens [n, C]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed from (global seed, global index), independent across indices:
    the first 8 bytes of sha256(SEED_DOMAIN, seed, index) as a little-endian integer, shifted
    right by one bit (the top 63 of those 64 bits)."""
    if not (0 <= seed < MAX_SEED and 0 <= index < MAX_SEED):
        raise ValueError(
            f"seed and index must be in [0, 2**64), got seed={seed}, index={index} (8 bytes each)"
        )
    message = SEED_DOMAIN + seed.to_bytes(8, "little") + index.to_bytes(8, "little")
    digest = hashlib.sha256(message).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - SEED_BITS)


def draw_sample(
    seed: int,
    index: int,
    *,
    num_tokens: int,
    code_dim: int,
    num_classes: int,
    labels: LabelDistribution = "uniform",
    noise_dtype: torch.dtype = torch.float32,
) -> tuple[int, torch.Tensor]:
    """(label, noise ``[num_tokens, code_dim]``) of sample ``index``.

    The label is always drawn first (so the noise stream is the same for both label modes);
    ``balanced`` replaces it by ``index % num_classes`` (every class equally often, to within
    one, over any prefix of the data set). The noise is standard normal drawn in float32, then
    cast to ``noise_dtype``: the cast value is what the map consumes and what is stored.
    """
    generator = torch.Generator().manual_seed(sample_seed(seed, index))
    uniform_label = int(torch.randint(num_classes, (1,), generator=generator))
    noise = torch.randn(num_tokens, code_dim, generator=generator, dtype=torch.float32)
    label = index % num_classes if labels == "balanced" else uniform_label
    return label, noise.to(noise_dtype)


def token_dtype(vocab_size: int) -> torch.dtype:
    """int16 when every id fits, else int32 (the stored token type)."""
    return torch.int16 if vocab_size <= INT16_MAX_VOCAB else torch.int32


@torch.no_grad()
def map_noise(
    teacher: Teacher,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    sampling: SamplingConfig,
    flow: FlowSettings,
    *,
    forced_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens ``[B, n]`` (long) that AR flow matching assigns to ``noise_BNC``.

    Without ``forced_tokens`` this is pair generation (paper Alg. 1): each step's mapped tokens
    are accepted. With ``forced_tokens [B, n]`` those are accepted instead (teacher forcing)
    and the return value is what the map gives at every step under that prefix: equal to
    ``forced_tokens`` exactly when the stored pair is what the map produces.
    """
    codebook_VC = teacher.codebook
    device = codebook_VC.device
    noise_BNC = noise_BNC.to(device)
    mapped = []
    with teacher.start(labels.to(device), sampling) as session:
        for start, end in teacher.geometry.step_ranges:
            log_probs_BLV = session.next_log_probs()
            tokens_BL = flow_match_tokens(
                noise_BNC[:, start:end],
                log_probs_BLV,
                codebook_VC,
                **flow.map_kwargs(),
            )
            mapped.append(tokens_BL)
            fed = tokens_BL if forced_tokens is None else forced_tokens[:, start:end]
            session.accept(fed.to(device))
    return torch.cat(mapped, dim=1)


def is_continuous(teacher: Teacher | ContinuousTeacher) -> bool:
    """Whether ``teacher`` has continuous tokens (``teachers.protocol.ContinuousTeacher``)."""
    return isinstance(teacher, ContinuousTeacher)


@torch.no_grad()
def map_noise_continuous(
    teacher: ContinuousTeacher,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    sampling: ContinuousSamplingConfig,
    *,
    forced_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens ``[B, n, C]`` of a continuous-token teacher: no codebook and no flow matching over
    log-probs; the head's deterministic sampler from the token's noise *is* the map (the noise
    stored with a pair is the head's initial noise of every token). With ``forced_tokens`` the
    map under that prefix, in one teacher-forced pass (what ``dd verify-shards`` compares)."""
    device = teacher.device
    labels, noise_BNC = labels.to(device), noise_BNC.to(device, torch.float32)
    if forced_tokens is None:
        return map_continuous_noise(teacher, labels, noise_BNC, sampling)
    forced = forced_tokens.to(device, torch.float32)
    return teacher.map_noise_teacher_forcing(labels, forced, noise_BNC, sampling)
