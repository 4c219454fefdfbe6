"""The recipe of a distillation run (``dd train --recipe recipes/distill_*.yaml``).

Typed sections, parsed by jsonargparse from the dataclass signatures (one source of truth for
defaults, help and validation; unknown keys are refused). Paper settings: DD paper Sec. 5.1, App. C.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dd.compute import Precision, check_num_threads
from dd.distill import OptimSettings
from dd.losses import LossSettings
from dd.teacher_spec import TeacherSpec

Strategy = Literal["auto", "ddp", "fsdp"]


@dataclass(frozen=True)
class PairsSection:
    """Where the stage-1 pairs are, and how many of the last ones are held out."""

    folder: str = "pairs"
    """The pair folder (``dd generate``'s output)."""
    num_heldout: int = 1000
    """Pairs held out for validation: the last ones by global index, in [0, pairs)."""
    num_train: int | None = None
    """Train on the first num_train of the other pairs only (null: all of them), for the
    learning curve against the number of pairs; the held-out pairs stay the same."""
    memory_map: str | None = None
    """A folder for a copy of the pairs in files, memory-mapped read-only, which the processes
    of a node share (``dd.mapped_pairs``; made on the first load, on a local disk with room for
    the pairs); null: every process holds the pairs in its memory."""


@dataclass(frozen=True)
class StudentSection:
    """The student (``dd.student.DDStudent``): timesteps, sampling, prior, initial weights."""

    timesteps: tuple[int, ...] = (0,)
    """Training timesteps: AR step indices, 0-based, increasing from 0 (released code: LlamaGen
    0,80; VAR-d16 0,5; VAR-d20/d24 0,4)."""
    split_token: int = 0
    """First token taken from the embedding head when sampling (the ones before it: the
    logits head's argmax), in [0, tokens]."""
    noise_logit_scale: float | None = None
    """Initial kappa of the learned noise-to-logit prior (``DDStudent``); null is the paper's
    student."""
    sampling_noise_logit_scale: float | None = None
    """Kappa used when sampling instead of the learned one (null: the learned one; see
    ``DDStudent``); > 0, and needs noise_logit_scale."""
    init_from: str | None = None
    """A student checkpoint folder or shipped student name whose weights start the run instead
    of the teacher's (to train a finished student further; its teacher must be this recipe's,
    the optimiser state starts fresh)."""
    backbone_options: dict[str, bool] = field(default_factory=dict)
    """Keywords of the family's ``student_backbone`` (LlamaGen: ``teacher_aligned: false``
    builds the paper's readout); empty: the family's default."""


@dataclass(frozen=True)
class RunSection:
    """The Trainer: steps, batch, EMA, clipping, precision, devices and the output folder."""

    output: str = "runs/distill"
    """Folder of the checkpoints, the resolved recipe and the final (EMA) student; rerunning
    the same command resumes from ``output/checkpoints/last.ckpt``."""
    seed: int = 0
    """Seed of the new layers' initialisation and of the batch order (pairs and timesteps)."""
    global_batch_size: int = 512
    """Pairs per optimiser step over all processes (divisible by their number; at most the
    training pairs), >= 1. The learning rate scales with it (optim.lr_reference_batch)."""
    max_steps: int = 1000
    """Optimiser steps of the whole run, >= 1."""
    ema_decay: float = 0.9999
    """Decay of the EMA of the student's weights, in [0, 1); the EMA student is the one saved."""
    gradient_clip_norm: float = 1.0
    """Gradient norm clipped to, >= 0 (0: no clipping)."""
    precision: Precision = "32-true"
    """Lightning's precision."""
    accelerator: str = "auto"
    """Lightning's accelerator (cpu, gpu, auto, ...)."""
    devices: int = 1
    """Devices per node, >= 1, or -1 for all."""
    num_nodes: int = 1
    """Nodes, >= 1."""
    strategy: Strategy = "auto"
    """Lightning's strategy; fsdp is refused with the reason (the EMA needs unsharded
    parameters)."""
    val_every_steps: int = 500
    """Validation on the held-out pairs (token agreement with the teacher) every this many
    optimiser steps, >= 1."""
    checkpoint_every_steps: int = 500
    """A checkpoint every this many optimiser steps, >= 1 (all kept, and last.ckpt)."""
    num_threads: int | None = None
    """Intra-op CPU threads per process (``torch.set_num_threads``); null: torch's default."""
    progress_bar: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.devices < 1 and self.devices != -1:
            raise ValueError(f"run.devices must be >= 1, or -1 for all, got {self.devices}")
        counts = {
            "global_batch_size": self.global_batch_size,
            "max_steps": self.max_steps,
            "num_nodes": self.num_nodes,
            "val_every_steps": self.val_every_steps,
            "checkpoint_every_steps": self.checkpoint_every_steps,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"run.{name} must be >= 1, got {value}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"run.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.strategy == "fsdp":
            raise ValueError(
                "run.strategy fsdp is not supported yet: dd train's EMA (dd.ema) averages an "
                "unsharded copy of the student and shares the live teacher's parameters, which "
                "FSDP would replace with sharded views. Use ddp (or auto)"
            )
        check_num_threads(self.num_threads, "run.num_threads")
        if not self.gradient_clip_norm >= 0:
            raise ValueError(
                f"run.gradient_clip_norm must be >= 0 (0: no clipping; Lightning treated a "
                f"negative norm as 0 silently), got {self.gradient_clip_norm}"
            )


@dataclass(frozen=True)
class TrainRecipe:
    """A distillation run (paper Alg. 2): teacher, pairs, student, loss, optimiser, Trainer."""

    teacher: TeacherSpec
    pairs: PairsSection = field(default_factory=PairsSection)
    student: StudentSection = field(default_factory=StudentSection)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        self.optim.check_length(self.run.max_steps)  # when read, not after the pairs load
