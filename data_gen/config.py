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
from dd.compute import check_num_threads
from dd.teacher_spec import TeacherSpec
from teachers.protocol import CfgSchedule, SamplingConfig

LabelDistribution = Literal["uniform", "balanced"]
NoiseDtype = Literal["float32", "float16", "float64"]
ComputeDtype = Literal["float32", "float64"]


@dataclass(frozen=True)
class SamplingOverrides:
    """``teachers.protocol.SamplingConfig`` fields; ``null`` keeps the teacher's default."""

    cfg_scale: float | None = None
    """Classifier-free guidance scale (1 with the constant schedule: no guidance)."""
    cfg_schedule: CfgSchedule | None = None
    """How the guidance scale applies: constant (LlamaGen) or linear in the AR step (VAR)."""
    cfg_interval: float | None = None
    """LlamaGen's cfg_interval, a step index, not a fraction: token 0 is always guided, token
    t >= 1 only while t - 1 <= cfg_interval; -1: all guided."""
    temperature: float | None = None
    """Softmax temperature, > 0."""
    top_k: int | None = None
    """Keep the k most likely codes, >= 0 (0: off)."""
    top_p: float | None = None
    """Nucleus sampling mass, in (0, 1] (1: off)."""
    head_steps: int | None = None
    """Continuous-token teachers only (``teachers.protocol.ContinuousSamplingConfig``): Euler
    steps of the per-token head, >= 1."""

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
    """Solver steps from t_start to t_end (NFE), >= 1."""
    order: int = flow_defaults.DEFAULT_ORDER
    """Order of the multistep DPM-Solver++ (``dd.solver``): 1, 2 or 3."""
    spacing: Literal["logsnr", "time"] = flow_defaults.DEFAULT_SPACING
    """The steps' times: uniform in logSNR (lambda) or in t."""
    token_rule: Literal["argmax", "nearest"] = flow_defaults.DEFAULT_TOKEN_RULE
    """The token of the end state: the posterior argmax at t_end, or the nearest code of
    nonzero probability."""
    t_start: float = flow_defaults.DEFAULT_T_START
    """First time of the solve, 0 < t_start < t_end (reached from t = 0 by one Euler step)."""
    t_end: float = flow_defaults.DEFAULT_T_END
    """Last time of the solve, t_start < t_end < 1; the token rule decides the rest."""
    compute_dtype: ComputeDtype = str(flow_defaults.DEFAULT_COMPUTE_DTYPE).removeprefix("torch.")
    """Arithmetic of the map (float64 for t_end much closer to 1: ``dd.flow``)."""

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
    """Pairs (noise, tokens, label) in the data set, >= 1."""
    labels: LabelDistribution = "uniform"
    """Class labels: uniform (drawn per sample) or balanced (``index % classes``: every class
    equally often, to within one, over any prefix)."""
    seed: int = 0
    """Global seed, in [0, 2**64); with the index it seeds each sample's label and noise."""
    noise_dtype: NoiseDtype = "float32"
    """The noise is drawn in float32 and cast to this dtype before the map: the stored noise
    is exactly what the map consumed. float16 halves the shards (VAR-d16: 87 -> 44 kB a
    pair); float64 only doubles the noise's bytes (float32 values cast exactly, no more
    precision)."""

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"pairs.num_pairs must be >= 1, got {self.num_pairs}")
        if not 0 <= self.seed < MAX_SEED:  # checked before the folder is stamped with it
            raise ValueError(f"pairs.seed must be in [0, 2**64), got {self.seed}")


@dataclass(frozen=True)
class OutputSettings:
    """Where the pairs are written, and how they are split into shards."""

    folder: str = "pairs"
    """The pair folder (shards and manifest.json); rerunning the same recipe resumes it."""
    shard_size: int = 1000
    """Pairs per shard, >= 1: shard k holds global indices [k * shard_size, (k + 1) *
    shard_size)."""

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"output.shard_size must be >= 1, got {self.shard_size}")


@dataclass(frozen=True)
class RunSettings:
    """Lightning Trainer settings; they change speed, never a record."""

    batch_size: int = 16
    """Samples per batch per device, >= 1."""
    accelerator: str = "auto"
    """Lightning's accelerator (cpu, gpu, auto, ...)."""
    devices: int | str = 1
    """Lightning's devices per node (a count, -1, or a Lightning string such as "auto")."""
    num_nodes: int = 1
    """Lightning's number of nodes (machines)."""
    strategy: str = "auto"
    """Lightning's strategy: "ddp" for several devices, "ddp_spawn" from notebooks."""
    progress_bar: bool = True
    """Show progress bars."""
    num_threads: int | None = None
    """Intra-op CPU threads per process (null: torch's default), >= 1. 1 is fastest on a
    shared or oversubscribed CPU; Lightning's CPU DDP already divides the cores between
    ranks."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"run.batch_size must be >= 1, got {self.batch_size}")
        check_num_threads(self.num_threads, "run.num_threads")


@dataclass(frozen=True)
class GenerateRecipe:
    """A pair-generation run (stage 1; DD Sec. 3.2): noise mapped to the teacher's tokens."""

    teacher: TeacherSpec
    sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    flow: FlowSettings = field(default_factory=FlowSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    run: RunSettings = field(default_factory=RunSettings)
