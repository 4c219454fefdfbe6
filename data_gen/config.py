"""The recipe of a pair-generation run (``dd generate --recipe recipes/generate_*.yaml``).

Sections: ``teacher`` (dd.teacher_spec.TeacherSpec), ``sampling`` (each field unset = the
teacher's default), ``flow`` (passed to ``dd.flow.flow_match_tokens``), ``pairs`` (what the
data set is), ``output`` (where and how it is stored) and ``run`` (how it is computed: never
changes a record). Only ``run`` may differ between a run and its resumption.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch

from dd import flow as flow_defaults
from dd.teacher_spec import TeacherSpec
from teachers.protocol import CfgSchedule, SamplingConfig

LabelDistribution = Literal["uniform", "balanced"]
NoiseDtype = Literal["float32", "float16", "float64"]
ComputeDtype = Literal["float32", "float64"]


@dataclass(frozen=True)
class SamplingOverrides:
    """``teachers.protocol.SamplingConfig`` fields; ``null`` keeps the teacher's default."""

    cfg_scale: float | None = None
    cfg_schedule: CfgSchedule | None = None
    cfg_interval: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    # Continuous-token teachers only (teachers.protocol.ContinuousSamplingConfig): head steps.
    head_steps: int | None = None

    def resolve(self, default: SamplingConfig) -> SamplingConfig:
        """``default`` with the fields set here replaced; a field the teacher's sampling does not
        have (e.g. ``head_steps`` for a discrete teacher) is a ``ValueError``."""
        changes = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }
        known = {f.name for f in dataclasses.fields(default)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"sampling: {unknown} do not apply to this teacher "
                f"({type(default).__name__} has {sorted(known)})"
            )
        return dataclasses.replace(default, **changes)


@dataclass(frozen=True)
class FlowSettings:
    """AR flow matching (DD Sec. 3.2): arguments of ``dd.flow.flow_match_tokens``.

    Defaults are ``dd.flow``'s own (one source of truth). Every argument that can change a
    mapped token is here, so the manifest and the settings key record it.
    """

    num_steps: int = flow_defaults.DEFAULT_NUM_STEPS
    order: int = flow_defaults.DEFAULT_ORDER
    spacing: Literal["logsnr", "time"] = flow_defaults.DEFAULT_SPACING
    token_rule: Literal["argmax", "nearest"] = flow_defaults.DEFAULT_TOKEN_RULE
    t_start: float = flow_defaults.DEFAULT_T_START
    t_end: float = flow_defaults.DEFAULT_T_END
    compute_dtype: ComputeDtype = str(flow_defaults.DEFAULT_COMPUTE_DTYPE).removeprefix("torch.")

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"flow.num_steps must be >= 1, got {self.num_steps}")
        if self.order not in (1, 2, 3):
            raise ValueError(f"flow.order must be 1, 2 or 3, got {self.order}")
        if not 0.0 < self.t_start < self.t_end < 1.0:
            raise ValueError(
                "flow needs 0 < t_start < t_end < 1, "
                f"got t_start={self.t_start}, t_end={self.t_end}"
            )

    def map_kwargs(self) -> dict:
        """Keyword arguments of ``dd.flow.flow_match_tokens``."""
        return {
            "num_steps": self.num_steps,
            "order": self.order,
            "spacing": self.spacing,
            "token_rule": self.token_rule,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "compute_dtype": getattr(torch, self.compute_dtype),
        }


MAX_SEED = 2**64  # a seed and a sample index enter data_gen.pairs.sample_seed as 8 bytes each


@dataclass(frozen=True)
class PairSettings:
    """What the data set is: sample ``i`` depends only on (teacher, settings, seed, i)."""

    num_pairs: int = 1000
    labels: LabelDistribution = "uniform"
    seed: int = 0
    # The noise is drawn in float32 and cast to this dtype before the map: the stored noise is
    # exactly what the map consumed. float16 halves the shards (VAR-d16: 87 -> 44 kB a pair).
    noise_dtype: NoiseDtype = "float32"

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"pairs.num_pairs must be >= 1, got {self.num_pairs}")
        if not 0 <= self.seed < MAX_SEED:  # checked before the folder is stamped with it
            raise ValueError(f"pairs.seed must be in [0, 2**64), got {self.seed}")


@dataclass(frozen=True)
class OutputSettings:
    folder: str = "pairs"
    # Shard k holds global indices [k * shard_size, (k + 1) * shard_size).
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"output.shard_size must be >= 1, got {self.shard_size}")


@dataclass(frozen=True)
class RunSettings:
    """Lightning Trainer settings; they change speed, never a record."""

    batch_size: int = 16  # per device
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several devices, "ddp_spawn" from notebooks
    progress_bar: bool = True
    # Intra-op CPU threads per process (null: torch's default). 1 is fastest on a shared or
    # oversubscribed CPU; Lightning's CPU DDP already divides the cores between ranks.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"run.batch_size must be >= 1, got {self.batch_size}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"run.num_threads must be >= 1 or null, got {self.num_threads}")


@dataclass(frozen=True)
class GenerateRecipe:
    teacher: TeacherSpec
    sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    flow: FlowSettings = field(default_factory=FlowSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    run: RunSettings = field(default_factory=RunSettings)
