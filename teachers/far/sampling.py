"""Sampling FAR: the head's deterministic Euler sampler and the AR noise -> token map.

- ``sample_head``: ``M`` Euler steps of size ``1 / M`` from the given noise (FAR Appendix B,
  Eq. 10-11), with constant classifier-free guidance on the velocity. The shortcut head is
  told ``d = 1 / M`` when ``M <= SHORTCUT_MAX_SIZED_STEPS`` and ``d = 0`` (the flow field) for
  more steps, as FAR does; the flow-matching head always gets ``d = 0``. Pure: no randomness.
- ``map_noise``: the AR loop over a teacher's session: noise ``[B, n, C]`` -> tokens
  ``[B, n, C]``, deterministic (the map DD's pairs are made of); family-independent, it lives in
  ``teachers.sampling.map_continuous_noise`` and is re-exported here.
- ``sample_continuous_tokens``: ``map_noise`` of Gaussian noise drawn from an injected
  ``generator``.
"""

from __future__ import annotations

import torch

from teachers.protocol import ContinuousSamplingConfig, ContinuousTeacher
from teachers.sampling import map_continuous_noise as map_noise

__all__ = [
    "DEFAULT_FAR_SAMPLING",
    "SAMPLING_PRESETS",
    "draw_noise",
    "head_step_size",
    "map_noise",
    "sample_continuous_tokens",
    "sample_head",
]

# FAR Appendix B: "d = 1/M when the number of sampling steps is 16 or fewer, d = 0 beyond".
SHORTCUT_MAX_SIZED_STEPS = 16
# The tiny teachers' sampling, chosen by FID on the digits evaluator (docs/far.md).
DEFAULT_FAR_SAMPLING = ContinuousSamplingConfig(cfg_scale=2.0, head_steps=8)
SAMPLING_PRESETS: dict[str, ContinuousSamplingConfig] = {
    "default": DEFAULT_FAR_SAMPLING,
    **{
        f"shortcut_{m}": ContinuousSamplingConfig(cfg_scale=2.0, head_steps=m) for m in (1, 2, 4, 8)
    },
}


def head_step_size(uses_step_size: bool, num_steps: int) -> float:
    """The ``d`` a head is given when sampling with ``num_steps`` Euler steps."""
    if uses_step_size and num_steps <= SHORTCUT_MAX_SIZED_STEPS:
        return 1.0 / num_steps
    return 0.0


@torch.no_grad()
def sample_head(
    head: torch.nn.Module,
    noise_NC: torch.Tensor,
    z_ND: torch.Tensor,
    *,
    num_steps: int,
    cfg_scale: float = 1.0,
    z_uncond_ND: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens ``[N, C]`` from ``noise [N, C]`` given conditions ``z [N, D]`` (and the null-class
    conditions ``z_uncond`` when ``cfg_scale != 1``)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    guided = cfg_scale != 1.0
    if guided and z_uncond_ND is None:
        raise ValueError("cfg_scale != 1 needs the unconditional conditions z_uncond")
    rows = noise_NC.shape[0]
    z_in = torch.cat([z_ND, z_uncond_ND]) if guided else z_ND
    d_value = head_step_size(head.uses_step_size, num_steps)
    d_X = torch.full((z_in.shape[0],), d_value, device=noise_NC.device)
    x_NC = noise_NC.float()
    for i in range(num_steps):
        t_X = torch.full_like(d_X, i / num_steps)
        x_in = torch.cat([x_NC, x_NC]) if guided else x_NC
        v_XC = head(x_in, t_X, d_X, z_in)
        if guided:
            v_cond, v_uncond = v_XC[:rows], v_XC[rows:]
            v_XC = v_uncond + (v_cond - v_uncond) * cfg_scale
        x_NC = x_NC + v_XC / num_steps
    return x_NC


def draw_noise(
    teacher: ContinuousTeacher, batch_size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Gaussian noise ``[B, n, C]`` from ``generator``, on its device (the CPU without one;
    the teacher moves it)."""
    shape = (batch_size, teacher.geometry.num_tokens, teacher.token_dim)
    return torch.randn(
        shape, generator=generator, device=None if generator is None else generator.device
    )


def sample_continuous_tokens(
    teacher: ContinuousTeacher,
    labels: torch.Tensor,
    sampling: ContinuousSamplingConfig | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Plain sampling: ``map_noise`` of noise drawn from ``generator`` -> tokens ``[B, n, C]``."""
    noise = draw_noise(teacher, labels.shape[0], generator)
    return map_noise(teacher, labels, noise, sampling)
