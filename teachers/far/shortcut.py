"""The head's training objectives: flow matching and shortcut self-consistency (pure functions).

Convention (shortcut models, Frans et al. 2024): ``x_t = (1 - t) x_0 + t x_1`` with noise
``x_0 ~ N(0, I)`` at ``t = 0`` and the token ``x_1`` at ``t = 1``; the head predicts a velocity.

- Flow matching (FAR Eq. 4-6 at ``d = 0``): ``|| v(x_t, t, 0) - (x_1 - x_0) ||^2``,
  ``t ~ U[0, 1)``.
- Self-consistency (FAR Eq. 7-8; Frans et al. 2024): one step of size ``2d`` equals two steps
  of size ``d``: ``s(x_t, t, 2d) ~ (s'(x_t, t, d) + s'(x'_{t+d}, t+d, d)) / 2`` with
  ``x'_{t+d} = x_t + d s'(x_t, t, d)``, where ``s'`` is the EMA head and the target carries no
  gradient. ``2d`` is a power of two (``ShortcutSettings.num_step_levels``) and ``t`` lies on
  the grid of ``2d`` so that ``t + 2d <= 1`` (the released code's discrete draw; FAR draws
  ``d`` from ``U[0, 1 - t]`` instead).

The EMA head is conditioned on the online backbone's feature, detached: the target depends on
the EMA head's weights only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.far.config import ShortcutSettings

HeadFn = nn.Module  # v(x [N, C], t [N], d [N], z [N, D]) -> [N, C]


def interpolate(noise_NC: torch.Tensor, tokens_NC: torch.Tensor, t_N: torch.Tensor):
    """``x_t = (1 - t) x_0 + t x_1``."""
    t = t_N[:, None]
    return (1 - t) * noise_NC + t * tokens_NC


def flow_matching_loss(
    head: HeadFn, tokens_NC: torch.Tensor, z_ND: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Mean squared error of the velocity at ``d = 0`` (FAR Eq. 4-6)."""
    noise_NC = torch.randn(tokens_NC.shape, generator=generator).to(tokens_NC)
    t_N = torch.rand(tokens_NC.shape[0], generator=generator).to(tokens_NC)
    x_t = interpolate(noise_NC, tokens_NC, t_N)
    v_pred = head(x_t, t_N, torch.zeros_like(t_N), z_ND)
    return F.mse_loss(v_pred, tokens_NC - noise_NC)


def draw_step_sizes(
    count: int, settings: ShortcutSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``2d`` as powers of two ``[count]``, ``t`` on the grid of ``2d`` with ``t + 2d <= 1``)."""
    level_N = torch.randint(0, settings.num_step_levels, (count,), generator=generator)
    double_d_N = 2.0 ** (-level_N.float())
    sections_N = (1.0 / double_d_N).round()
    t_N = torch.floor(torch.rand(count, generator=generator) * sections_N) * double_d_N
    return double_d_N, t_N


def step_size_input(d_N: torch.Tensor, settings: ShortcutSettings) -> torch.Tensor:
    """The ``d`` the head is given: the finest step is queried as the flow field (``0``)."""
    return torch.where(d_N <= settings.min_step_size, torch.zeros_like(d_N), d_N)


@torch.no_grad()
def self_consistency_targets(
    ema_head: HeadFn,
    x_t_NC: torch.Tensor,
    t_N: torch.Tensor,
    d_N: torch.Tensor,
    z_ND: torch.Tensor,
    settings: ShortcutSettings,
) -> torch.Tensor:
    """``(s'(x_t, t, d) + s'(x_t + d s'(x_t, t, d), t + d, d)) / 2`` with the EMA head ``s'``
    (FAR Eq. 8), without gradient."""
    d_in = step_size_input(d_N, settings)
    z_ND = z_ND.detach()
    v_first = ema_head(x_t_NC, t_N, d_in, z_ND)
    x_mid = x_t_NC + d_N[:, None] * v_first
    v_second = ema_head(x_mid, t_N + d_N, d_in, z_ND)
    return (v_first + v_second) / 2


def shortcut_loss(
    head: HeadFn,
    ema_head: HeadFn,
    tokens_NC: torch.Tensor,
    z_ND: torch.Tensor,
    settings: ShortcutSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """FAR Eq. 9: the first ``self_consistency_fraction`` of the rows learn self-consistency,
    the rest flow matching; one mean squared error over all rows (as the released code)."""
    count = tokens_NC.shape[0]
    num_sc = int(count * settings.self_consistency_fraction)
    fm_tokens, fm_z = tokens_NC[num_sc:], z_ND[num_sc:]
    noise_NC = torch.randn(fm_tokens.shape, generator=generator).to(tokens_NC)
    t_fm = torch.rand(fm_tokens.shape[0], generator=generator).to(tokens_NC)
    x_fm = interpolate(noise_NC, fm_tokens, t_fm)
    v_fm = head(x_fm, t_fm, torch.zeros_like(t_fm), fm_z)
    fm_error = (v_fm - (fm_tokens - noise_NC)).square().sum(dim=1)
    parts = {"flow": fm_error.mean().item() / tokens_NC.shape[1]}
    if num_sc == 0:
        return fm_error.mean() / tokens_NC.shape[1], parts
    sc_tokens, sc_z = tokens_NC[:num_sc], z_ND[:num_sc]
    double_d, t_sc = draw_step_sizes(num_sc, settings, generator)
    double_d, t_sc = double_d.to(tokens_NC), t_sc.to(tokens_NC)
    sc_noise = torch.randn(sc_tokens.shape, generator=generator).to(tokens_NC)
    x_sc = interpolate(sc_noise, sc_tokens, t_sc)
    target = self_consistency_targets(ema_head, x_sc, t_sc, double_d / 2, sc_z, settings)
    v_sc = head(x_sc, t_sc, step_size_input(double_d, settings), sc_z)
    sc_error = (v_sc - target).square().sum(dim=1)
    parts["consistency"] = sc_error.mean().item() / tokens_NC.shape[1]
    loss = torch.cat([sc_error, fm_error]).mean() / tokens_NC.shape[1]
    return loss, parts
