"""Plain LlamaGen sampling over the incremental session: a pure function of its inputs.

``generate`` reproduces the official ``generate(model, labels, n, cfg_scale, cfg_interval,
temperature, top_k, top_p)`` (FACTS.md section 2); randomness comes only from ``generator``.
"""

from __future__ import annotations

import torch

from teachers.llamagen.gpt import GPT
from teachers.llamagen.session import LlamaGenSession
from teachers.protocol import SamplingConfig
from teachers.sampling import sample_from_log_probs

# The paper's DD setting for LlamaGen (FACTS.md section 1): CFG 2.0, the teacher's defaults.
DD_SAMPLING = SamplingConfig(
    cfg_scale=2.0, cfg_schedule="constant", cfg_interval=-1.0, temperature=1.0, top_k=0, top_p=1.0
)
# Official FID settings per size (FACTS.md section 2): cfg 2.0 (B, L), 1.75 (XL, XXL), 1.65 (3B).
OFFICIAL_FID_CFG = {"B": 2.0, "L": 2.0, "XL": 1.75, "XXL": 1.75, "3B": 1.65}


@torch.no_grad()
def generate(
    gpt: GPT,
    labels: torch.Tensor,
    sampling: SamplingConfig = DD_SAMPLING,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """KV-cached AR sampling -> image tokens ``[B, n]`` (raster order), multinomial draws."""
    chosen = []
    with LlamaGenSession(gpt, labels, sampling) as session:
        for _ in range(session.num_steps):
            tokens_B1 = sample_from_log_probs(session.next_log_probs(), generator)
            session.accept(tokens_B1)
            chosen.append(tokens_B1)
    return torch.cat(chosen, dim=1)
