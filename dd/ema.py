"""The EMA of ``dd train``: Lightning's weight averaging, with the frozen parts shared.

Lightning's ``EMAWeightAveraging`` averages a deep copy of the whole LightningModule, so the
frozen teacher and perceptual network were held twice (var-d16: 1.68 GB more; measured by
``benchmarks/bench_ema.py``). Worse, it "averaged" the frozen copy too:
``decay * w + (1 - decay) * w`` is not ``w`` in floating point, and at the end of ``fit`` the
averaged values were copied back into the live teacher (20 steps at decay 0.99 changed 62,827
of llamagen-digits' 557,995 teacher elements, by up to 1.3e-6), while validation ran on the
drifted copy.

``FrozenSharingEMA`` builds the averaged copy with every frozen parameter (and the buffers of
every submodule with no trainable parameter) taken from the live module rather than copied, and
leaves a tensor that the copy shares with the live module as it is. The trainable parameters
are averaged exactly as Lightning's callback does (``get_ema_avg_fn``, per tensor), so a run's
student is unchanged.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn


def frozen_submodules(module: nn.Module) -> list[nn.Module]:
    """The top-most submodules of ``module`` that have parameters, none requiring grad."""
    parameters = list(module.parameters())
    if parameters and not any(p.requires_grad for p in parameters):
        return [module]
    return [found for child in module.children() for found in frozen_submodules(child)]


def frozen_tensors(module: nn.Module) -> list[torch.Tensor]:
    """What the averaged copy shares with ``module``: every parameter that does not require
    grad (wherever it sits), and the buffers of its frozen submodules."""
    frozen = [p for p in module.parameters() if not p.requires_grad]
    return frozen + [b for part in frozen_submodules(module) for b in part.buffers()]


def copy_sharing_frozen(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that holds ``frozen_tensors(module)`` themselves (deep-copy
    memo: tied references stay tied). A sanity check: its parameters line up with
    ``module``'s, name for name, as the averaging zips them."""
    memo: dict[int, object] = {id(tensor): tensor for tensor in frozen_tensors(module)}
    copied = copy.deepcopy(module, memo)
    names = [(name, p.shape) for name, p in module.named_parameters()]
    copied_names = [(name, p.shape) for name, p in copied.named_parameters()]
    if names != copied_names:
        raise RuntimeError(
            f"the averaged copy of {type(module).__name__} does not line up with it "
            f"({len(copied_names)} parameters against {len(names)})"
        )
    return copied


def ema_of_own_tensors(decay: float):
    """Lightning's EMA step (``get_ema_avg_fn``) for a tensor of the copy's own; a tensor it
    shares with the live module is returned as it is."""
    ema = get_ema_avg_fn(decay)

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        if averaged.data_ptr() == current.data_ptr():
            return averaged
        return ema(averaged, current, num_averaged)

    return average


class FrozenSharingEMA(WeightAveraging):
    """An EMA of the trainable parameters after every optimiser step (buffers are not
    averaged: see ``dd.train_command.make_trainer``); validation and the end of ``fit`` use
    the averaged weights, as with Lightning's ``EMAWeightAveraging``. Which parameters are
    frozen is read when ``fit`` begins. Sharded strategies are not supported (Lightning's
    callback does not support them either; ``RunSection`` refuses ``fsdp``)."""

    def __init__(self, decay: float) -> None:  # get_ema_avg_fn checks decay is in [0, 1]
        super().__init__(use_buffers=False, avg_fn=ema_of_own_tensors(decay))
        self._shared: list[nn.Parameter] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # AveragedModel deep-copies the module it is given: give it an empty one, then the
        # copy that shares the frozen parts. Lightning reports the module on the device the
        # strategy will move it to; the shared parts move there with the copy, as they would.
        device = self._device or pl_module.device
        averaged = AveragedModel(nn.Module(), device=device, use_buffers=False, **self._kwargs)
        averaged.module = copy_sharing_frozen(pl_module).to(device)
        self._average_model = averaged
        self._shared = [t for t in frozen_tensors(pl_module) if isinstance(t, nn.Parameter)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Refuses a shared parameter that has since been unfrozen: it would never be averaged."""
        unfrozen = [p for p in self._shared if p.requires_grad]
        if unfrozen:
            raise RuntimeError(
                f"{len(unfrozen)} parameters were frozen when fit began and now require grad; "
                "the EMA shares them with the live module and cannot average them. Freeze or "
                "unfreeze parameters before fit"
            )
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
