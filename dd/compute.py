"""Where and in what precision the one-process commands (``dd eval``, ``dd sample``) compute.

``dd generate`` and ``dd train`` place their work through Lightning (``run.accelerator``,
``run.precision``); the stage-3 commands run in one process on one device, named as torch
names it, and take the same precision names as ``dd train`` (Lightning's). ``autocast_off``
serves every stage: what must stay float32 under the mixed precisions leaves autocast.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
"""Lightning's precision names: float32, or bf16 / float16 autocast (weights stay float32)."""

# A warning Lightning's Trainer raises by calling a torch helper torch has deprecated (nothing a
# user can change): filtered around dd generate's and dd train's Trainer runs.
LIGHTNING_PYTREE_WARNING = r".*isinstance\(treespec, LeafSpec\).*"

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

CPU_RUN_FLAGS = "--run.accelerator cpu --run.devices 1"


def run_section_refusal(error: Exception) -> str:
    """Lightning's refusal of a recipe's run section (a GPU recipe on a CPU machine: "No
    supported gpu backend found!"), with the flags that run it on this machine's CPU."""
    return f"{error} (to run on this machine's CPU instead: {CPU_RUN_FLAGS})"


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise ``cpu``,
    ``cuda`` or ``cuda:N``, refused in one line when this machine does not have it (before any
    model is loaded)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"device {name!r} is not a device: give auto, cpu, cuda or cuda:N"
        ) from error
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {name!r}: this command runs on cpu or cuda (or auto)")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r}: this machine has no CUDA device (torch.cuda.is_available() is "
            "False); give cpu or auto"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def check_num_threads(num_threads: int | None, key: str) -> None:
    """A recipe's thread count: null (torch's default) or >= 1, refused when the recipe is
    read (``torch.set_num_threads(0)`` raised a ``RuntimeError`` traceback once work began)."""
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"{key} must be >= 1 or null (torch's default), got {num_threads}")


def compute_precision(
    device: torch.device, precision: Precision
) -> contextlib.AbstractContextManager:
    """The context model calls run in: autocast to bf16 / float16 on ``device``'s type for the
    mixed precisions (matrix products and attention in half precision, which CUDA's flash SDPA
    kernels need; softmax, norms and losses in float32, autocast's rules), nothing for
    ``32-true``. The code choices that must stay exact (``dd.sampling.nearest_codes``) leave
    autocast themselves."""
    if precision == "32-true":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(
            f"precision must be one of 32-true, bf16-mixed, 16-mixed; got {precision!r}"
        )
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device``'s type (nothing where torch has no autocast for it),
    for what must stay float32 under the mixed precisions whoever calls it: the teacher-KL
    term's prior and targets (``DDStudent.noise_logit_prior``, ``dd.losses.teacher_log_probs``),
    the choice of nearest codes (``dd.sampling.nearest_codes``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
