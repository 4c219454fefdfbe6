"""Evaluating samplers side by side: the teacher, DD (Alg. 3), DD + teacher (Alg. 4), skip-n,
onestep*. Every method draws from the same per-sample randomness (``dd.sampling.randomness_at``:
sample ``i`` is the same whichever batch holds it), its images are timed (seconds per image,
sampling and decoding, one process) and scored in one feature space (``dd.metrics.spaces``)
against one reference: FID, IS, precision/recall, and class accuracy where the space's classes
are the teacher's labels (the digits classifier of the tiny teachers).

Method specs (``parse_methods``): ``teacher``, ``dd:1``, ``dd:2``, ``dd+teacher`` (the teacher's
presets, ``dd.interleave``) or ``dd+teacher:pre-trained-n-m`` / ``dd+teacher:first-second``,
``skip:N``, ``onestep*``.

Continuous-token teachers (``teachers.protocol.ContinuousTeacher``, FAR): every method; the
teacher, DD, Alg. 4 and skip-n (``dd.continuous_sampling.skip_tokens``: its parallel pass maps
each remaining position's noise) map the same per-sample noise
(``teachers.sampling.map_continuous_noise``, ``dd.continuous_sampling``); onestep* is
``dd.continuous_sampling.independent_token_sampler`` over the pairs' tokens, one seeded stream
per sample.
"""

from __future__ import annotations

import functools
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from data_gen.pairs import sample_seed
from dd.baselines import (
    ClassTokenTable,
    check_skip_n,
    onestep_tokens,
    skip_tokens,
    teacher_tokens,
)
from dd.compute import Precision, compute_precision
from dd.continuous_sampling import independent_token_sampler
from dd.continuous_sampling import sample_tokens as continuous_dd_tokens
from dd.continuous_sampling import sample_tokens_interleaved as continuous_interleaved_tokens
from dd.continuous_sampling import skip_tokens as continuous_skip_tokens
from dd.interleave import (
    INTERLEAVE_PRESETS,
    check_interleave,
    interleave_model_calls,
    parse_interleave,
    preset_name,
)
from dd.metrics.digits import check_unit_images
from dd.metrics.generative import FeatureStats, frechet_distance, inception_score, precision_recall
from dd.metrics.spaces import FeatureSpace, embed_stream, resize_for_scoring
from dd.sampling import (
    SampleRandomness,
    randomness_at,
    sample_tokens,
    sample_tokens_interleaved,
    seed_base,
)
from dd.student import DDStudent
from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    SamplingConfig,
    Teacher,
)
from teachers.sampling import map_continuous_noise

MethodKind = Literal["teacher", "dd", "dd+teacher", "skip", "onestep*"]
# Timed rounds of the teacher forward and the DD calls (after a warm-up). Calls' times move from
# round to round on a 2-core CPU, so the verdicts read the median over rounds of the ratio within
# a round. Between runs it still moves: llamagen-digits' all-in ratio 1.37x-1.55x over 5 runs of
# 5 rounds, 1.38x-1.55x of 15; its ratio of median times 1.28x-1.59x and 1.39x-1.50x
# (benchmarks/timing_rounds.py; docs/evaluation.md, "Seconds per image: rounds and ratios").
FORWARD_REPEATS = 15


@dataclass(frozen=True)
class Method:
    """One sampler: ``kind`` (the report's method), ``steps`` (model calls per image, as the
    paper counts them) and its option (DD steps, interleaving range or skipped steps)."""

    kind: MethodKind
    steps: int
    name: str
    dd_steps: int = 0
    interleave: tuple[int, int] | None = None
    skip_n: int = 0


@dataclass
class Samplers:
    """What the methods sample with. ``sampling``: the teacher's settings (those of the pairs)."""

    teacher: Teacher | ContinuousTeacher
    sampling: SamplingConfig | ContinuousSamplingConfig
    student: DDStudent | None = None  # or a dd.continuous.ContinuousDDStudent
    token_table: ClassTokenTable | None = None  # onestep* of a codebook teacher: the pairs'
    # onestep* of a continuous-token teacher: the pairs' tokens [N, n, C] and labels [N]
    token_pool: tuple[torch.Tensor, torch.Tensor] | None = None
    # every model call (teacher, student, baselines; not decoding or scoring) runs in it
    precision: Precision = "32-true"

    @property
    def continuous(self) -> bool:
        return isinstance(self.teacher, ContinuousTeacher)


def interleave_presets(student: DDStudent, preset_key: str | None) -> list[tuple[int, int]]:
    """The named presets of a teacher (``INTERLEAVE_PRESETS[preset_key]``) that fit the
    student's 2nd timestep; otherwise the same pattern from its timesteps: all of
    ``[0, second)``, its later half, its last step."""
    second = student.timesteps[1]
    named = [parse_interleave(p) for p in INTERLEAVE_PRESETS.get(preset_key or "", ())]
    fitting = [r for r in named if r[1] == second]
    if fitting:
        return fitting
    return sorted({(0, second), (second // 2, second), (second - 1, second)})


def parse_methods(
    specs: Sequence[str], samplers: Samplers, *, preset_key: str | None = None
) -> list[Method]:
    """Method specs (module docstring) -> methods, checked against the teacher and student."""
    geometry = samplers.teacher.geometry
    student = samplers.student
    methods: list[Method] = []
    for spec in specs:
        kind, _, option = spec.partition(":")
        if kind in ("dd", "dd+teacher") and student is None:
            raise ValueError(f"method {spec!r} needs a student")
        if kind == "teacher" and not option:
            methods.append(Method("teacher", geometry.num_steps, "teacher"))
        elif kind == "onestep*" and not option and samplers.continuous:
            if samplers.token_pool is None:
                raise ValueError("method 'onestep*' needs the teacher's tokens (a pair folder)")
            methods.append(Method("onestep*", 1, "onestep*"))
        elif kind == "onestep*" and not option:
            if samplers.token_table is None:
                raise ValueError("method 'onestep*' needs the teacher's tokens (a pair folder)")
            methods.append(Method("onestep*", 1, "onestep*"))
        elif kind == "dd" and option.isdigit():
            count = int(option)
            if not 1 <= count <= len(student.timesteps):
                raise ValueError(
                    f"method {spec!r}: the student was trained for timesteps "
                    f"{student.timesteps}, so dd:1 to dd:{len(student.timesteps)}"
                )
            methods.append(Method("dd", count, f"dd {count}-step", dd_steps=count))
        elif kind == "dd+teacher":
            if len(student.timesteps) < 2:
                raise ValueError(
                    f"method {spec!r} needs a student trained for two timesteps or more; this "
                    f"one was trained for {student.timesteps}"
                )
            if option:
                numbers = re.fullmatch(r"(\d+)-(\d+)", option)  # a 0-based "first-second"
                given = (int(numbers[1]), int(numbers[2])) if numbers else option
                ranges = [parse_interleave(given)]
            else:
                ranges = interleave_presets(student, preset_key)
            for first, second in ranges:
                check_interleave((first, second), student.timesteps, geometry.num_steps)
                name = f"dd+teacher {preset_name(first, second)}"
                calls = interleave_model_calls(first, second)
                methods.append(Method("dd+teacher", calls, name, interleave=(first, second)))
        elif kind == "skip" and option.isdigit():
            skip_n = int(option)
            try:
                check_skip_n(skip_n, geometry.num_steps)
            except ValueError as error:
                raise ValueError(f"method {spec!r}: {error}") from None
            methods.append(
                Method("skip", geometry.num_steps - skip_n, f"skip-{skip_n}", skip_n=skip_n)
            )
        else:
            raise ValueError(
                f"unknown method {spec!r}; give teacher, dd:K, dd+teacher[:pre-trained-n-m], "
                "skip:N or onestep*"
            )
    names = [method.name for method in methods]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # dd sample wrote both into one folder, dd eval sampled and scored it twice
        raise ValueError(f"methods {list(specs)} give {repeated} more than once")
    return methods


def method_tokens(
    method: Method, samplers: Samplers, labels: torch.Tensor, randomness: SampleRandomness
) -> torch.Tensor:
    """Tokens ``[B, n]`` of one batch."""
    teacher, sampling, uniforms = samplers.teacher, samplers.sampling, randomness.uniforms_BN
    if samplers.continuous:
        raise ValueError("continuous-token teachers sample through continuous_method_tokens")
    if method.kind == "teacher":
        return teacher_tokens(teacher, labels, uniforms, sampling)
    if method.kind == "skip":
        return skip_tokens(teacher, labels, uniforms, method.skip_n, sampling)
    if method.kind == "onestep*":
        return onestep_tokens(samplers.token_table, labels, uniforms)
    if method.kind == "dd":
        return sample_tokens(samplers.student, labels, randomness.noise_BNC, method.dd_steps)
    return sample_tokens_interleaved(
        samplers.student,
        labels,
        randomness.noise_BNC,
        method.interleave,
        uniforms_BN=uniforms,
        sampling=sampling,
    )


def continuous_method_tokens(
    method: Method,
    samplers: Samplers,
    labels: torch.Tensor,
    noise_BNC: torch.Tensor,
    indices: Sequence[int],
    base: int,
) -> torch.Tensor:
    """Tokens ``[B, n, C]`` of one batch of a continuous-token teacher: the teacher's AR map, DD
    (Alg. 3), Alg. 4 and skip-n of the samples' noise; onestep* draws from the sample's own
    stream (the one its noise comes from: onestep* uses no noise), so sample ``i`` is the same
    in any batch."""
    if method.kind == "teacher":
        return map_continuous_noise(samplers.teacher, labels, noise_BNC, samplers.sampling)
    if method.kind == "dd":
        return continuous_dd_tokens(samplers.student, labels, noise_BNC, method.dd_steps)
    if method.kind == "dd+teacher":
        return continuous_interleaved_tokens(
            samplers.student, labels, noise_BNC, method.interleave, sampling=samplers.sampling
        )
    if method.kind == "skip":
        return continuous_skip_tokens(
            samplers.teacher, labels, noise_BNC, method.skip_n, samplers.sampling
        )
    tokens, token_labels = samplers.token_pool
    return torch.cat(
        [
            independent_token_sampler(
                tokens, token_labels, labels[row : row + 1].cpu(),
                generator=torch.Generator().manual_seed(sample_seed(base, index)),
            )
            for row, index in enumerate(indices)
        ]
    )  # fmt: skip


def wait_for_device(device: torch.device | str) -> None:
    """On a GPU, calls return before their kernels finish: wait for those of ``device`` (the
    models') before reading a clock. ``torch.cuda.synchronize()`` without a device waits for
    the current one, cuda:0, so a run on cuda:1 timed kernel launches only; a CPU run on a GPU
    machine has nothing to wait for."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_batches(
    method: Method,
    samplers: Samplers,
    labels: torch.Tensor,
    *,
    seed: int,
    batch_size: int,
    progress: bool = False,
    parts: dict[str, float] | None = None,
) -> Iterator[torch.Tensor]:
    """The images ``[b, 3, H, W]`` in ``[0, 1]`` of ``labels [N]``, batch by batch (float32, on
    the CPU); sample ``i`` uses ``randomness_at(seed_base(seed), [i])`` whatever the batch size
    (DD draws what ``dd.sample`` draws with a generator seeded with ``seed``). ``parts``, when
    given, receives after the last batch the seconds per image of each part: ``randomness``
    (the per-sample seeded streams), ``model`` (every model call and token choice) and
    ``decode`` (tokens to images); what the caller does between batches is not counted."""
    teacher = samplers.teacher
    n = teacher.geometry.num_tokens
    code_dim = teacher.token_dim if samplers.continuous else int(teacher.codebook.shape[1])
    spent = dict.fromkeys(("randomness", "model", "decode"), 0.0)
    base = seed_base(seed)
    starts = range(0, labels.shape[0], batch_size)
    for start in tqdm(starts, desc=method.name, disable=not progress, leave=False):
        batch = labels[start : start + batch_size]
        began = time.perf_counter()
        indices = range(start, start + len(batch))
        randomness = randomness_at(base, indices, n, code_dim)
        drawn = time.perf_counter()
        tokens = model_calls(method, samplers, batch, randomness, indices, base)
        wait_for_device(teacher.device)
        modelled = time.perf_counter()
        images = teacher.decode_tokens(tokens).float().cpu()
        decoded = time.perf_counter()
        spent["randomness"] += drawn - began
        spent["model"] += modelled - drawn
        spent["decode"] += decoded - modelled
        yield images
    if parts is not None:
        count = max(labels.shape[0], 1)
        parts.update({part: seconds / count for part, seconds in spent.items()})


def generate(
    method: Method,
    samplers: Samplers,
    labels: torch.Tensor,
    *,
    seed: int,
    batch_size: int,
    progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """(images ``[N, 3, H, W]`` in ``[0, 1]``, seconds per image) of ``labels``: every batch of
    ``generate_batches`` held at once."""
    parts: dict[str, float] = {}
    batches = generate_batches(
        method, samplers, labels, seed=seed, batch_size=batch_size, progress=progress, parts=parts
    )
    images = torch.cat(list(batches))
    return images, sum(parts.values())


def model_calls(
    method: Method,
    samplers: Samplers,
    labels: torch.Tensor,
    randomness: SampleRandomness,
    indices: range,
    base: int,
) -> torch.Tensor:
    """Tokens of one batch: every model call and token choice of ``method``, nothing else, in
    ``samplers.precision`` on the teacher's device."""
    with compute_precision(samplers.teacher.device, samplers.precision):
        if samplers.continuous:
            return continuous_method_tokens(
                method, samplers, labels, randomness.noise_BNC, indices, base
            )
        return method_tokens(method, samplers, labels, randomness)


def alternated_seconds(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds of each call in each of ``repeats`` rounds that run every call once, in turn,
    after one warm-up round. Other load on the machine falls on all of them alike, so ratios
    taken round by round, or of medians, hold better than timings taken at different moments.
    ``device``: where the calls run (``wait_for_device``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            wait_for_device(device)
            began = time.perf_counter()
            call()
            wait_for_device(device)
            seconds[name].append(time.perf_counter() - began)
    return seconds


def teacher_forward(
    teacher: Teacher | ContinuousTeacher, batch_size: int, precision: Precision = "32-true"
) -> Callable[[], None]:
    """ONE full-sequence teacher forward (teacher forcing, unguided) at ``batch_size``, in
    ``precision``: the cost floor of a one-step generator built from the teacher's trunk.
    Continuous-token teachers: the trunk and ONE unguided head step at every position. Its
    inputs are made on the teacher's device once, outside the timed call."""
    device = teacher.device
    labels = torch.arange(batch_size, device=device) % teacher.num_classes
    n = teacher.geometry.num_tokens
    if isinstance(teacher, ContinuousTeacher):
        tokens = torch.zeros(batch_size, n, teacher.token_dim, device=device)
        one_call = ContinuousSamplingConfig(cfg_scale=1.0, head_steps=1)

        def forward() -> None:
            with compute_precision(device, precision):
                teacher.map_noise_teacher_forcing(labels, tokens, tokens, one_call)

        return forward
    tokens = torch.zeros(batch_size, n, dtype=torch.long, device=device)

    def forward() -> None:
        with compute_precision(device, precision):
            teacher.logits_teacher_forcing(labels, tokens)

    return forward


@dataclass(frozen=True)
class RatioSpread:
    """A call's seconds over the forward's in the same round: the median and the quartiles over
    the rounds (each ratio is taken within one round, so slow drifts of the machine cancel)."""

    median: float
    low: float  # first quartile
    high: float  # third quartile

    @classmethod
    def of_rounds(cls, seconds: Sequence[float], forward: Sequence[float]) -> RatioSpread:
        ratios = [a / b for a, b in zip(seconds, forward, strict=True)]
        if len(ratios) < 2:
            return cls(ratios[0], ratios[0], ratios[0])
        low, median, high = statistics.quantiles(ratios, n=4, method="inclusive")
        return cls(median, low, high)

    def as_json(self) -> dict[str, float]:
        return {"median": self.median, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ForwardTiming:
    """``seconds_per_image``: the median of every timed call (``"forward"``, each DD method's
    model calls by name, ``"<name> all-in"``, ``"decode"``); ``to_forward``: the
    ``RatioSpread`` of each call but the forward."""

    seconds_per_image: dict[str, float]
    to_forward: dict[str, RatioSpread]
    rounds: int

    def as_json(self) -> dict[str, object]:
        """The keys ``dd eval`` and ``dd demo`` write beside ``one_forward_seconds_per_image``."""
        return {
            "alternated_seconds_per_image": self.seconds_per_image,
            "to_forward": {name: ratio.as_json() for name, ratio in self.to_forward.items()},
            "timing_rounds": self.rounds,
        }


@torch.no_grad()
def forward_seconds_per_image(
    samplers: Samplers,
    methods: Sequence[Method],
    batch_size: int,
    *,
    seed: int,
    repeats: int = FORWARD_REPEATS,
) -> ForwardTiming:
    """Seconds per image of one full-sequence teacher forward (``"forward"``), of the model
    calls of every DD method (by name: the student forward and token choice, no noise drawing
    and no decoding) and of the whole of it (``"<name> all-in"``: ``generate``, the per-sample
    noise streams, the model calls and the decoding to images), and of the decoding alone
    (``"decode"``: the first DD method's tokens to images), timed alternately
    (``alternated_seconds``) at ``batch_size`` on the same labels and randomness: the stage-2
    and stage-3 issues' speed ratios, side by side, round by round."""
    teacher = samplers.teacher
    labels = torch.arange(batch_size) % teacher.num_classes
    indices = range(batch_size)
    code_dim = teacher.token_dim if samplers.continuous else int(teacher.codebook.shape[1])
    base = seed_base(seed)
    randomness = randomness_at(base, indices, teacher.geometry.num_tokens, code_dim)
    forward = teacher_forward(teacher, batch_size, samplers.precision)
    calls: dict[str, Callable[[], object]] = {"forward": forward}
    dd_methods = [m for m in methods if m.kind == "dd"]
    for method in dd_methods:
        calls[method.name] = functools.partial(
            model_calls, method, samplers, labels, randomness, indices, base
        )
        calls[f"{method.name} all-in"] = functools.partial(
            generate, method, samplers, labels, seed=seed, batch_size=batch_size
        )
    if dd_methods:  # what the all-in call adds to the model calls, beside the noise
        tokens = model_calls(dd_methods[0], samplers, labels, randomness, indices, base)
        calls["decode"] = functools.partial(teacher.decode_tokens, tokens)
    seconds = alternated_seconds(calls, repeats, teacher.device)
    return ForwardTiming(
        {name: statistics.median(v) / batch_size for name, v in seconds.items()},
        {
            name: RatioSpread.of_rounds(v, seconds["forward"])
            for name, v in seconds.items()
            if name != "forward"
        },
        repeats,
    )


@dataclass(frozen=True)
class Reference:
    """What generated images are compared with: feature statistics, and the features themselves
    when known (precision/recall need them; ``.npz`` statistics alone do not have them)."""

    stats: FeatureStats
    features: torch.Tensor | None = None
    size: tuple[int, int] | None = None  # (height, width) of its images, when known

    @classmethod
    def from_images(cls, space: FeatureSpace, images_01: torch.Tensor) -> Reference:
        features, _ = space.embed(images_01)
        height, width = images_01.shape[-2:]
        return cls(FeatureStats.of(features), features, (int(height), int(width)))

    @classmethod
    def from_batches(
        cls,
        space: FeatureSpace,
        batches: Iterable[torch.Tensor],
        stats: FeatureStats | None,
        *,
        size: tuple[int, int],
        total: int | None = None,
        progress: bool = False,
    ) -> Reference:
        """The features of images given batch by batch (``embed_stream``: an image folder, an
        ADM reference batch's images), with their own statistics unless ``stats`` are given
        (an ADM ``.npz``'s published ``mu`` and ``sigma``). ``size``: their ``(height,
        width)``, read by the caller before embedding them (to check it first). ``progress``:
        a bar of the ``total`` images (minutes for 10,000 on a CPU, which were silent)."""
        batches = counted(batches, total=total, desc="reference images", disable=not progress)
        features, _ = embed_stream(space, batches)
        height, width = size
        return cls(
            FeatureStats.of(features) if stats is None else stats,
            features,
            (int(height), int(width)),
        )


def counted(
    batches: Iterable[torch.Tensor], *, total: int | None, desc: str, disable: bool
) -> Iterator[torch.Tensor]:
    """``batches`` as they are, with a tqdm bar counting their images (not the batches)."""
    with tqdm(total=total, desc=desc, unit="image", disable=disable) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.shape[0])


def score(
    features: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    space: FeatureSpace,
    reference: Reference,
    *,
    fid_rows: torch.Tensor | None = None,
    is_splits: int,
) -> dict[str, float | None]:
    """FID, IS, precision/recall (on ``fid_rows``, default all) and class accuracy (all) from
    the images' embeddings in ``space``."""
    subset = features if fid_rows is None else features[fid_rows]
    result: dict[str, float | None] = {
        "fid": frechet_distance(FeatureStats.of(subset), reference.stats),
        "inception_score": inception_score(logits, is_splits),
        "precision": None,
        "recall": None,
        "class_accuracy": None,
    }
    if reference.features is not None:
        result["precision"], result["recall"] = precision_recall(reference.features, subset)
    if space.labels_are_classes:
        result["class_accuracy"] = (logits.argmax(1) == labels.cpu()).double().mean().item()
    return result


def checked_images(batches: Iterable[torch.Tensor], name: str) -> Iterator[torch.Tensor]:
    """``batches`` as they are, each checked to be float images in ``[0, 1]``
    (``check_unit_images``; its errors start with ``name``)."""
    for batch in batches:
        check_unit_images(batch, name)
        yield batch


def evaluate_methods(
    methods: Sequence[Method],
    samplers: Samplers,
    labels: torch.Tensor,
    space: FeatureSpace,
    reference: Reference,
    *,
    seed: int,
    batch_size: int,
    fid_rows: torch.Tensor | None = None,
    is_splits: int,
    image_size: int | None,
    progress: bool = True,
    warm_up: bool | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One row per method: its name, kind, steps, metrics and seconds per image (in all; of the
    model calls alone: ``model_seconds_per_image``, without noise drawing and decoding; and of
    the decoding alone: ``decode_seconds_per_image``). Each batch of images is embedded as it
    comes (``embed_stream``): only features are kept, never all the images. ``image_size``
    (``dd.eval_command.EvalRecipe``): every method's images are resized to it before they are
    embedded (``resize_for_scoring``); that is scoring, not sampling, so it is not timed.
    ``warm_up`` (null: on CUDA only): each method first samples and decodes one batch
    untimed, since CUDA initialises lazily (kernels, library handles, the allocator's pools),
    which would fall on the first method timed (the teacher, by default). ``on_row``: called
    with each row as soon as its method is scored (``dd eval`` prints it and saves the report
    so far: a failure in a later method kept nothing of hours of GPU rows)."""
    if warm_up is None:
        warm_up = samplers.teacher.device.type == "cuda"
    rows = []
    bar = tqdm(methods, desc="methods", disable=not progress)
    for method in bar:
        bar.set_description(f"sampling {method.name}")
        if warm_up:
            for _ in generate_batches(
                method, samplers, labels[:batch_size], seed=seed, batch_size=batch_size
            ):
                pass
        parts: dict[str, float] = {}
        batches = generate_batches(
            method, samplers, labels, seed=seed, batch_size=batch_size,
            progress=progress, parts=parts,
        )  # fmt: skip
        # checked before the resize (it clamps) and named: the space's own check cannot say
        # which method's images are wrong (a diverged student's NaN, say)
        batches = checked_images(batches, f"the images of {method.name}")
        if image_size is not None:  # between batches: generate_batches' clocks do not see it
            batches = (resize_for_scoring(batch, image_size) for batch in batches)
        features, logits = embed_stream(space, batches)
        seconds = sum(parts.values())
        bar.set_description(f"scoring {method.name}")  # FID at 2048-d: seconds, which were silent
        metrics = score(
            features, logits, labels, space, reference, fid_rows=fid_rows, is_splits=is_splits
        )
        rows.append(
            {
                "method": method.kind,
                "name": method.name,
                "steps": method.steps,
                **metrics,
                "seconds_per_image": seconds,
                "model_seconds_per_image": parts["model"],
                "decode_seconds_per_image": parts["decode"],
            }  # fmt: skip
        )
        if on_row is not None:
            on_row(rows[-1])
    return rows
