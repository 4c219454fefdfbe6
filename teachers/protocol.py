"""The Teacher protocol: what Distilled Decoding needs from any AR image model.

DD (paper Sec. 3) touches a teacher in four ways:

1. its token geometry: ``n`` tokens visited in AR steps that are contiguous token ranges
   (LlamaGen: ``n`` steps of one token; VAR: one step per scale);
2. its codebook ``V x C``: AR flow matching (Eq. 3) moves a Gaussian noise token onto it;
3. an incremental, KV-cached sampling session that hands out guided next-step probabilities
   and accepts the tokens chosen for that step: one loop serves plain teacher sampling,
   pair generation (Alg. 1) and teacher-interleaved sampling (Alg. 4);
4. a decoder from tokens or continuous embeddings to images (the LPIPS loss flows through
   the embedding path).

Families implement it by translation, never by forking: official parameter names are kept
so that checkpoints load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

CfgSchedule = Literal["constant", "linear"]


@dataclass(frozen=True)
class TokenGeometry:
    """Where the tokens are and in which AR steps they are produced.

    ``step_grids[k] = (h, w)``: step ``k`` produces ``h * w`` tokens in raster order.
    LlamaGen: ``n`` steps of grid ``(1, 1)`` plus ``image_grid = (16, 16)``.
    VAR: one step per scale, grids ``(1, 1), (2, 2), ..., (16, 16)``.
    """

    step_grids: tuple[tuple[int, int], ...]
    image_grid: tuple[int, int]

    def __post_init__(self) -> None:
        if not self.step_grids:
            raise ValueError("TokenGeometry needs at least one AR step")
        for h, w in self.step_grids:
            if h <= 0 or w <= 0:
                raise ValueError(f"step grid sizes must be positive, got {(h, w)}")

    @property
    def num_steps(self) -> int:
        return len(self.step_grids)

    @property
    def tokens_per_step(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.step_grids)

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens_per_step)

    @property
    def step_ranges(self) -> tuple[tuple[int, int], ...]:
        """``[start, end)`` token range of each AR step."""
        ranges, start = [], 0
        for count in self.tokens_per_step:
            ranges.append((start, start + count))
            start += count
        return tuple(ranges)

    @classmethod
    def raster(cls, height_tokens: int, width_tokens: int) -> TokenGeometry:
        """One token per AR step in raster order (LlamaGen)."""
        return cls(((1, 1),) * (height_tokens * width_tokens), (height_tokens, width_tokens))

    @classmethod
    def multiscale(cls, patch_nums: tuple[int, ...]) -> TokenGeometry:
        """One AR step per square scale (VAR's ``patch_nums``)."""
        return cls(tuple((p, p) for p in patch_nums), (patch_nums[-1], patch_nums[-1]))


def set_finite_floats(config: object, names: Sequence[str]) -> None:
    """Refuse NaN and infinite settings: NaN passes every ``<``/``>`` check and then surfaces
    as a token error far away (NaN guidance), infinite temperature as uniform draws. Set the
    numbers as ``float`` (on a frozen dataclass): ``cfg_scale=2`` and ``2.0`` are one setting,
    and a pair folder's settings key (a hash of their JSON) must not tell them apart."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        object.__setattr__(config, name, float(value))


@dataclass(frozen=True)
class SamplingConfig:
    """How the teacher turns logits into the next-step distribution.

    One dataclass for both families; each family documents the fields it honours and rejects
    settings it cannot honour with a ``ValueError``.

    - ``cfg_scale``: classifier-free guidance scale. With ``cfg_schedule="constant"``
      (LlamaGen) logits are ``uncond + (cond - uncond) * cfg_scale``; with ``"linear"`` (VAR)
      the scale ramps with the step index ``k``: ``t = cfg_scale * k / (K - 1)``,
      ``logits = (1 + t) * cond - t * uncond``. ``cfg_scale == 1`` (constant) disables CFG.
    - ``cfg_interval``: LlamaGen's ``cfg_interval``, a step index, not a fraction: token 0 is
      always guided, token ``t >= 1`` only while ``t - 1 <= cfg_interval``; -1 = all guided.
    - ``temperature``, ``top_k`` (0 = off), ``top_p`` (1.0 = off).
    """

    cfg_scale: float = 1.0
    cfg_schedule: CfgSchedule = "constant"
    cfg_interval: float = -1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.cfg_schedule not in ("constant", "linear"):
            raise ValueError(
                f"cfg_schedule must be 'constant' or 'linear', got {self.cfg_schedule!r}"
            )
        set_finite_floats(self, ("cfg_scale", "cfg_interval", "temperature", "top_p"))
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def uses_cfg(self) -> bool:
        return not (self.cfg_schedule == "constant" and self.cfg_scale == 1.0)


@runtime_checkable
class TeacherSession(Protocol):
    """One incremental, KV-cached AR pass over a batch.

    Use as a context manager so the KV cache is always torn down::

        with teacher.start(labels, sampling) as session:
            for step in range(teacher.geometry.num_steps):
                log_probs = session.next_log_probs()      # [B, L_step, V]
                session.accept(choose(log_probs))         # [B, L_step]
    """

    @property
    def step(self) -> int:
        """Index of the AR step whose distribution ``next_log_probs`` returns."""
        ...

    def next_log_probs(self) -> torch.Tensor:
        """Guided log-probabilities ``[B, L_step, V]`` of the current step, float32.

        After CFG, temperature, top-k and top-p: filtered codes are exactly ``-inf``.
        Calling it twice without ``accept`` returns the same tensor (no recompute).
        """
        ...

    def accept(self, tokens: torch.Tensor) -> None:
        """Feed the tokens ``[B, L_step]`` chosen for the current step; advance one step.

        The project's sessions run no forward here: the next ``next_log_probs`` runs every
        step accepted since then in one pass (a given prefix, Alg. 4, costs one forward)."""
        ...

    def close(self) -> None:
        """Release the KV cache. Idempotent."""
        ...

    def __enter__(self) -> TeacherSession: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Teacher(Protocol):
    """A pretrained AR image model as DD sees it.

    Labels are class indices in ``[0, num_classes)``; ``null_class == num_classes`` is the
    unconditional label used by CFG. Tokens are ``LongTensor [B, n]`` in the order of
    ``geometry`` (steps concatenated, raster order inside a step).
    """

    family: str
    geometry: TokenGeometry
    num_classes: int

    @property
    def null_class(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where the weights are; every public method moves its tensor inputs here."""
        ...

    @property
    def codebook(self) -> torch.Tensor:
        """``[V, C]`` token embeddings in the space AR flow matching works in.

        LlamaGen: the L2-normalised codebook (what its quantiser looks up);
        VAR: the raw codebook (its quantiser uses plain L2 nearest codes).
        """
        ...

    def default_sampling(self) -> SamplingConfig:
        """The family's sampling defaults (DD paper App. C; docs/teachers.md)."""
        ...

    def check_sampling(self, sampling: SamplingConfig) -> None:
        """Raise a ``ValueError`` for settings this family cannot honour (``start`` calls it;
        so must any sampler that guides the teacher's logits without a session)."""
        ...

    def fingerprint(self) -> str:
        """A short stable hash of the weights and architecture: names the teacher in shards."""
        ...

    def start(self, labels: torch.Tensor, sampling: SamplingConfig | None = None) -> TeacherSession:
        """Open an incremental session for ``labels [B]`` (``None`` = ``default_sampling()``).

        Raises ``ValueError`` on bad labels or on settings the family cannot honour.
        """
        ...

    def logits_teacher_forcing(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unguided logits ``[B, n, V]`` of every token given the label and earlier steps."""
        ...

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` from tokens ``[B, n]``."""
        ...

    def student_backbone(self, **options: object) -> torch.nn.Module:
        """A trainable DD student backbone built from copies of the teacher's own modules.

        ``backbone(labels [B], inputs [B, n, C], is_data [B, n] bool)`` ->
        ``(logits [B, n+1, V], embeddings [B, n+1, C])``: position 0 is the family's extra
        (class / start) position, position ``i + 1`` predicts token ``i`` and has seen input
        ``i``. At initialisation position 0's logits are the teacher's unguided first-step
        logits (the one place both compute the same function). A family may take keyword
        options (LlamaGen: ``teacher_aligned``); called without any, its default.

        Keywords ``logits_positions`` and ``embedding_positions`` (``range`` of those n + 1
        positions, ``head_positions``; ``None``: all): each head runs at its positions only
        and returns ``[B, len(range), V]`` / ``[B, len(range), C]``, the same values as the
        full outputs' slices. Optional for callers, required of every family's backbone:
        sampling always passes them (``DDStudent``, ``dd.sampling.dd_step``), so a backbone
        without them trains but cannot sample.
        """
        ...

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from continuous per-token embeddings ``[B, n, C]``.

        Differentiable in ``embeddings``. The embeddings live in the same space as
        ``codebook`` (so ``decode_embeddings(codebook[tokens]) == decode_tokens(tokens)``).
        """
        ...


def add_code_scores_(
    logits_BNV: torch.Tensor,
    vectors_BNC: torch.Tensor,
    codebook_VC: torch.Tensor,
    alpha: float = 1.0,
) -> torch.Tensor:
    """``logits += alpha * <vectors_i, c_j>`` for every code ``c_j``, in place (``logits`` may be a
    view; autograd-safe) and returned. In place because ``[B, n, V]`` is the student's largest
    tensor: a fresh one per term costs more than the product's K = C multiply-adds
    (docs/benchmarks.md, "a one-step sample against one teacher forward")."""
    batch, _, vocab = logits_BNV.shape
    codebook_BCV = codebook_VC.T.to(logits_BNV.dtype).expand(batch, -1, vocab)
    return logits_BNV.baddbmm_(vectors_BNC.to(logits_BNV.dtype), codebook_BCV, alpha=alpha)


def head_positions(positions: range | None, length: int) -> slice:
    """The slice of a backbone's ``length`` output positions that a head runs at: ``positions``
    (a ``range`` with step 1 inside ``[0, length]``; empty is allowed) or ``None`` for all."""
    if positions is None:
        return slice(0, length)
    if not isinstance(positions, range) or positions.step != 1:
        raise ValueError(f"head positions must be a range with step 1, got {positions!r}")
    if not 0 <= positions.start <= positions.stop <= length:
        raise ValueError(f"head positions {positions} must lie within [0, {length}]")
    return slice(positions.start, positions.stop)


def clamp_straight_through(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` in value, the identity in gradient: decoders clamp their images as
    released, and DD's perceptual loss still gets a gradient at every pixel (no clamping on the
    gradient path)."""
    return x + (x.clamp(low, high) - x).detach()


def check_labels(labels: torch.Tensor, num_classes: int, *, allow_null: bool = False) -> None:
    """Raise a ``ValueError`` unless ``labels`` is a 1-D integer tensor of valid class indices."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got {labels!r:.80}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    upper = num_classes + 1 if allow_null else num_classes
    if labels.numel() and (labels.min() < 0 or labels.max() >= upper):
        bad = labels[(labels < 0) | (labels >= upper)].tolist()
        raise ValueError(
            f"class labels must be in [0, {upper}) (num_classes={num_classes}); got {bad[:8]}"
        )


def check_tokens(
    tokens: torch.Tensor, vocab_size: int, *, length: int, batch_size: int | None = None
) -> None:
    """Raise a ``ValueError`` unless ``tokens`` is an integer ``[B, length]`` tensor of codes in
    ``[0, vocab_size)`` (and ``B == batch_size`` when given)."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a tensor, got {type(tokens).__name__}")
    batch = tokens.shape[0] if tokens.dim() == 2 and batch_size is None else batch_size
    if (
        tokens.dim() != 2
        or tuple(tokens.shape) != (batch, length)
        or tokens.dtype.is_floating_point
        or tokens.dtype.is_complex
        or tokens.dtype == torch.bool
    ):
        expected = f"[{'B' if batch_size is None else batch_size}, {length}]"
        raise ValueError(
            f"tokens must be integers {expected}, got {tuple(tokens.shape)} {tokens.dtype}"
        )
    # one host sync (a session checks every step's tokens; each sync stalls a GPU's queue)
    if tokens.numel() and bool(((tokens < 0) | (tokens >= vocab_size)).any()):
        raise ValueError(
            f"tokens must be in [0, {vocab_size}), got {tokens.min().item()}..{tokens.max().item()}"
        )


# ---- Continuous-token teachers (FAR-style, teachers/far; issue #13)
#
# A continuous-token AR model has no codebook and no next-step probabilities: each AR step
# draws its tokens by running the per-token head's sampler from Gaussian noise. With a
# deterministic head sampler (Euler steps of a flow / shortcut head) that sampler *is* a
# deterministic noise -> token map per step, so DD's pairs (noise, tokens) exist without a
# codebook (FAR Sec. 3.3 and App. B; docs/far.md). The session below exposes exactly that map.


@dataclass(frozen=True)
class ContinuousSamplingConfig:
    """How a continuous-token teacher maps noise to tokens.

    - ``cfg_scale``: classifier-free guidance on the head's velocity,
      ``v = v_uncond + (v_cond - v_uncond) * cfg_scale``; ``1`` runs no null half.
    - ``head_steps``: ``M``, the number of Euler steps of size ``1 / M`` of the per-token head
      (FAR Appendix B, Eq. 10-11).
    """

    cfg_scale: float = 1.0
    head_steps: int = 8

    def __post_init__(self) -> None:
        steps = self.head_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"head_steps must be an integer >= 1, got {steps!r}")
        set_finite_floats(self, ("cfg_scale",))
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0


@runtime_checkable
class ContinuousTeacherSession(Protocol):
    """One incremental, KV-cached AR pass of a continuous-token teacher::

    with teacher.start(labels, sampling) as session:
        for step in range(teacher.geometry.num_steps):
            tokens = session.next_tokens(noise_k)        # [B, L_step, C], deterministic
            session.accept(tokens)                       # or any other tokens [B, L_step, C]
    """

    @property
    def step(self) -> int: ...

    def next_tokens(self, noise: torch.Tensor) -> torch.Tensor:
        """The head's deterministic map of ``noise [B, L_step, C]`` to this step's tokens."""
        ...

    def accept(self, tokens: torch.Tensor) -> None:
        """Feed the tokens ``[B, L_step, C]`` (float) chosen for the current step; advance."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ContinuousTeacherSession: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class ContinuousTeacher(Protocol):
    """A continuous-token AR image model as DD sees it: the :class:`Teacher` contract without
    the codebook and the log-probabilities. Tokens are float ``[B, n, token_dim]`` in the order
    of ``geometry``; labels as in :class:`Teacher`."""

    family: str
    geometry: TokenGeometry
    num_classes: int

    @property
    def null_class(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def token_dim(self) -> int:
        """``C``: the width of one continuous token (and of the noise that maps onto it)."""
        ...

    def default_sampling(self) -> ContinuousSamplingConfig: ...

    def fingerprint(self) -> str: ...

    def start(
        self, labels: torch.Tensor, sampling: ContinuousSamplingConfig | None = None
    ) -> ContinuousTeacherSession: ...

    def map_noise_teacher_forcing(
        self,
        labels: torch.Tensor,
        tokens: torch.Tensor,
        noise: torch.Tensor,
        sampling: ContinuousSamplingConfig | None = None,
        *,
        start: int = 0,
    ) -> torch.Tensor:
        """``[B, n - start, C]``: the head map of ``noise`` at positions ``start..n-1`` given the
        earlier ``tokens`` (one full-sequence pass; what a session fed ``tokens`` returns step
        by step). ``start`` spares the head's work on positions the caller does not need."""
        ...

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` from tokens ``[B, n, C]``."""
        ...

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The same map as ``decode_tokens``, differentiable in ``embeddings [B, n, C]``."""
        ...

    def student_backbone(self, **options: object) -> torch.nn.Module:
        """A trainable DD student backbone from copies of the teacher's modules, with the
        embedding head only (no codebook, no logits): ``backbone(labels [B], inputs [B, n, C],
        is_data [B, n] bool) -> embeddings [B, n + 1, C]``; position 0 is the class position,
        position ``i + 1`` predicts token ``i`` and has seen input ``i`` (``dd.continuous``)."""
        ...


def decoded_image_shape(teacher: Teacher | ContinuousTeacher) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the teacher's images: one dummy sample (all-zero tokens)
    decoded. The protocol states no image size; the decoder is the one place that knows it,
    and callers check it before they sample or train (``dd train``, ``dd eval``)."""
    n = teacher.geometry.num_tokens
    if isinstance(teacher, ContinuousTeacher):  # float tokens [1, n, C]
        tokens = torch.zeros(1, n, teacher.token_dim)
    else:
        tokens = torch.zeros(1, n, dtype=torch.long)
    with torch.no_grad():
        channels, height, width = teacher.decode_tokens(tokens.to(teacher.device)).shape[1:]
    return int(channels), int(height), int(width)


def check_continuous_tokens(
    tokens: torch.Tensor,
    token_dim: int,
    *,
    length: int,
    batch_size: int | None = None,
    name: str = "tokens",
) -> None:
    """Raise a ``ValueError`` unless ``tokens`` is a finite float ``[B, length, token_dim]``
    tensor (and ``B == batch_size`` when given)."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tokens).__name__}")
    batch = tokens.shape[0] if tokens.dim() == 3 and batch_size is None else batch_size
    if (
        tokens.dim() != 3
        or tuple(tokens.shape) != (batch, length, token_dim)
        or (not tokens.dtype.is_floating_point)
    ):
        expected = f"[{'B' if batch_size is None else batch_size}, {length}, {token_dim}]"
        raise ValueError(
            f"{name} must be float {expected}, got {tuple(tokens.shape)} {tokens.dtype}"
        )
    if not torch.isfinite(tokens).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
