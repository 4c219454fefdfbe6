"""LlamaGen sampling presets (``SamplingConfig``), by name in ``SAMPLING_PRESETS``.

Plain sampling is the family-independent ``teachers.sampling.sample_tokens`` over the
teacher's session; with these settings it reproduces the official ``generate(model, labels,
n, cfg_scale, cfg_interval, temperature, top_k, top_p)`` (autoregressive/models/generate.py).
"""

from __future__ import annotations

from teachers.protocol import SamplingConfig

# The paper's DD setting for LlamaGen (DD paper App. C): CFG 2.0, the teacher's defaults.
DD_PAPER_SAMPLING = SamplingConfig(
    cfg_scale=2.0, cfg_schedule="constant", cfg_interval=-1.0, temperature=1.0, top_k=0, top_p=1.0
)
# Official FID settings per size (LlamaGen GETTING_STARTED.md, "Sampling"): cfg 2.0 (B, L),
# 1.75 (XL, XXL), 1.65 (3B); top_k 0, top_p 1.0.
OFFICIAL_FID_CFG = {"B": 2.0, "L": 2.0, "XL": 1.75, "XXL": 1.75, "3B": 1.65}
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "dd_paper": DD_PAPER_SAMPLING,
    **{
        f"official_fid_{size}": SamplingConfig(cfg_scale=cfg, cfg_schedule="constant")
        for size, cfg in OFFICIAL_FID_CFG.items()
    },
}
