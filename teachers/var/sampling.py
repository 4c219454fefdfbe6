"""VAR sampling presets (``SamplingConfig``), by name in ``SAMPLING_PRESETS``.

Plain sampling is the family-independent ``teachers.sampling.sample_tokens`` over the
teacher's session (images: ``teacher.decode_tokens``); with these settings it reproduces the
official ``autoregressive_infer_cfg`` (VAR models/var.py), whose ``top_k=1`` is
``sample_tokens(..., greedy=True)``.
"""

from __future__ import annotations

from teachers.protocol import SamplingConfig

# Paper (DD, Sec. 5) setting for both teachers: cfg 2.0; top-k/top-p as the VAR README.
DD_PAPER_SAMPLING = SamplingConfig(cfg_scale=2.0, cfg_schedule="linear", top_k=900, top_p=0.96)
# VAR README FID setting: autoregressive_infer_cfg(cfg=1.5, top_k=900, top_p=0.96).
README_FID_SAMPLING = SamplingConfig(cfg_scale=1.5, cfg_schedule="linear", top_k=900, top_p=0.96)
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "dd_paper": DD_PAPER_SAMPLING,
    "readme_fid": README_FID_SAMPLING,
}
