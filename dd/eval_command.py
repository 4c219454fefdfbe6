"""``dd eval --student DIR --pairs DIR [--methods ...] [--output report.json] [--print_config]``.

Samples every method (``dd.evaluate``) with the same labels and per-sample seeds, times it, and
scores it against a reference in one feature space:

- ``metric: digits`` (automatic for the tiny teachers): the shipped digits classifier; the
  reference is a digits split (``train`` by default, or ``heldout``); class accuracy too;
- ``metric: inception`` (automatic for real teachers): torch-fidelity's InceptionV3 from a local
  weights file (``inception_weights``; a clear error names the file when it is missing); the
  reference is an image folder (embedded batch by batch) or an ``.npz`` with ``mu`` and
  ``sigma`` (the ADM format). Precision/recall need the reference's features: an ADM reference
  batch's ``arr_0`` images are embedded for them (FID keeps its published ``mu`` and
  ``sigma``); an ``.npz`` of statistics alone gives them as null. ``image_size`` resizes the
  generated images (never the reference) as LlamaGen's protocol scores its 384 px models at
  256 px; a reference whose image size differs from the scored one is refused before any
  sampling (``scored_image_size`` and ``reference_image_size`` in the JSON).

Also timed: one full-sequence teacher forward (the cost floor of a one-step generator). The
teacher's sampling settings are the pairs' (their manifest), else the tiny teacher's
recommended ones, else the family default. JSON to ``output`` (checked before any model loads:
``dd.outputs.check_output``; written atomically after each finished method, ``complete``
false, and at the end), and a table on stdout, row by row as the methods finish.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dd.compute import Precision, check_num_threads, resolve_device
from dd.config import parse_recipe
from dd.outputs import check_output
from dd.teacher_spec import TeacherSpec

DEFAULT_METHODS = ("teacher", "dd:1", "dd:2", "dd+teacher", "skip:1", "onestep*")
Metric = Literal["auto", "digits", "inception"]
DIGITS_SPLITS = ("train", "heldout")
REPORT_PURPOSE = "a file for the JSON report"


@dataclass(frozen=True)
class EvalRecipe:
    """What to evaluate, against what, and where to write the JSON."""

    student: str | None = None
    """A student checkpoint folder or a shipped student's name; null: give a teacher."""
    teacher: TeacherSpec | None = None
    """The teacher (``--teacher.help``). Without a student: the teacher and the baselines only;
    with one: what differs from its card's spec, field by field (where its teacher's files are
    now: --teacher.checkpoint, --teacher.tokenizer_checkpoint); the fingerprint must match."""
    pairs: str | None = None
    """A pair folder of the teacher: the teacher's sampling settings and onestep*'s token
    frequencies (read only when onestep* is among the methods); null: no onestep*, and the
    student's recorded (or the tiny teacher's) sampling."""
    methods: list[str] | None = None
    """Method specs (``dd.evaluate``): teacher, dd:K, dd+teacher (the presets; or
    dd+teacher:pre-trained-n-m, dd+teacher:first-second), skip:N, onestep*; null: the defaults
    (teacher, dd:1, dd:2, dd+teacher, skip:1, onestep*) that the inputs allow."""
    num_per_class: int = 100
    """Samples per class (balanced labels, every class of the teacher), >= 1."""
    fid_per_class: int | None = None
    """FID and precision/recall on the first k samples of each class, 1 <= k <=
    num_per_class; null: on all of them."""
    seed: int = 0
    """Seed of the per-sample randomness: sample i draws the same noise in every method."""
    batch_size: int = 250
    """Images per batch when sampling and timing, >= 1 (the images do not depend on it)."""
    metric: Metric = "auto"
    """Feature space of the scores: digits (the shipped digits classifier; class accuracy
    too), inception (torch-fidelity's InceptionV3); auto: digits for the tiny teachers,
    inception for real ones."""
    reference: str | None = None
    """What the samples are scored against. digits: a split, train (null) or heldout;
    inception (required): an image folder, or an .npz with mu and sigma (ADM format; its arr_0
    images, when present, give precision/recall)."""
    inception_weights: str | None = None
    """The local InceptionV3 weights file (metric inception; null: the default place,
    ``dd.metrics.spaces``)."""
    image_size: int | None = None
    """Pixels (square) every generated image is resized to before it is scored, as LlamaGen's
    official protocol scores its 384 px models at 256 (``dd.metrics.spaces.resize_for_scoring``);
    null: scored as generated. Never applied to the reference (metric inception only)."""
    is_splits: int = 10
    """Inception Score: the mean over this many splits of the samples, >= 1."""
    output: str | None = None
    """The JSON report's file; null: only the table on stdout. Written after each finished
    method (complete: false, the rows so far) and at the end. A folder, a path through a file
    or a place that cannot be written is refused before any model loads."""
    num_threads: int | None = None
    """Intra-op CPU threads (``torch.set_num_threads``); null: torch's default."""
    device: str = "auto"
    """Where the models and the Inception network run: cpu, cuda, cuda:N, or auto (the first
    CUDA device when there is one, else the CPU)."""
    precision: Precision = "32-true"
    """Of every model call (teacher, student, baselines, the timed forward): 32-true, or bf16 /
    float16 autocast (bf16-mixed, 16-mixed; CUDA's flash attention kernels need half
    precision). Decoding and scoring stay float32. LlamaGen's sampler itself runs in bf16 on
    CUDA whatever this says (docs/teachers.md)."""
    progress_bar: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.student is None and self.teacher is None:
            raise ValueError("give a student (a checkpoint), a teacher (a spec), or both")
        if self.num_per_class < 1 or self.batch_size < 1:
            raise ValueError("num_per_class and batch_size must be >= 1")
        # Checked before any sampling: they failed (or scored fewer rows) only after it.
        per_class = self.fid_per_class
        if per_class is not None and not 1 <= per_class <= self.num_per_class:
            raise ValueError(
                f"fid_per_class must be null or in [1, num_per_class = {self.num_per_class}], "
                f"got {per_class}"
            )
        if self.is_splits < 1:
            raise ValueError(f"is_splits must be >= 1, got {self.is_splits}")
        check_num_threads(self.num_threads, "num_threads")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(
                f"image_size must be null (score images as generated) or a size in pixels "
                f">= 1, got {self.image_size}"
            )


@dataclass
class Setup:
    """Everything the samplers of one teacher need, resolved from a recipe."""

    samplers: object  # dd.evaluate.Samplers
    teacher_name: str  # tiny name or the family
    preset_key: str | None
    tiny_data: str | None  # the data set a tiny teacher was trained on; None: not a tiny one


def method_specs(given: list[str] | None, samplers) -> list[str]:
    """The methods asked for, or the ``DEFAULT_METHODS`` that the inputs allow: the DD methods
    need a student, onestep* a pair folder (what is left out is said on stderr; methods asked
    for by name fail with that reason instead)."""
    if given is not None:
        return list(given)
    missing = {}
    if samplers.student is None:
        missing.update({spec: "no student" for spec in DEFAULT_METHODS if spec.startswith("dd")})
    elif len(samplers.student.timesteps) < 2:
        missing.update(dict.fromkeys(("dd:2", "dd+teacher"), "the student has one timestep"))
    if samplers.token_table is None and samplers.token_pool is None:
        missing["onestep*"] = "no pair folder (pairs)"
    for spec, reason in missing.items():
        print(f"dd: default method {spec} left out: {reason}", file=sys.stderr)
    return [spec for spec in DEFAULT_METHODS if spec not in missing]


def preset_key_of(spec: TeacherSpec) -> str | None:
    if spec.tiny is not None:
        return spec.tiny
    if spec.family == "var" and spec.preset:
        return f"var-{spec.preset}"
    return spec.family


def card_teacher_defaults(namespace) -> dict | None:
    """``parse_recipe``'s ``defaults_for`` of dd eval and dd sample: the ``--teacher.*`` given
    beside ``--student`` are laid over the student card's teacher spec, so moved files need
    only ``--teacher.checkpoint X --teacher.tokenizer_checkpoint Y`` (the whole spec, up to
    hundreds of characters of official_args, had to be restated). None: nothing to lay over."""
    from dd.checkpoint import read_card, student_folder

    given = namespace.get("teacher")
    if namespace.get("student") is None or given is None:
        return None
    try:
        card = read_card(student_folder(namespace.student))["teacher"]
    except (FileNotFoundError, ValueError):
        return None  # build_setup says what is wrong with the student
    under = card_spec_under(given.as_dict(), card)
    return None if under is None else {"teacher": under}


def card_spec_under(given: dict, card: dict) -> dict | None:
    """The card's spec fields a given spec keeps: not those contradicting it (the card's
    presets under given official_args, and the reverse); None for another teacher (a tiny
    one, or another family), which stands alone."""
    if given.get("tiny") is not None or given.get("family") not in (None, card.get("family")):
        return None
    under = dict(card)
    if given.get("official_args") is not None:
        under.pop("preset", None)
        under.pop("tokenizer_preset", None)
    if given.get("preset") is not None or given.get("tokenizer_preset") is not None:
        under.pop("official_args", None)
    return under


def load_card_teacher(folder: Path, *, device: torch.device | str):
    """The teacher a student's card names; files no longer there name the flags that say
    where they are now."""
    from dd.checkpoint import read_card
    from dd.teacher_spec import load_teacher

    spec = TeacherSpec(**read_card(folder)["teacher"])
    try:
        return load_teacher(spec, device=device)
    except FileNotFoundError as error:
        if spec.family is None:
            raise
        raise FileNotFoundError(
            f"{error} (the teacher of {folder}'s card): give where its files are now with "
            "--teacher.checkpoint PATH --teacher.tokenizer_checkpoint PATH beside --student "
            "(they replace the card's paths)"
        ) from error


def asks_for_onestep(methods: list[str] | None) -> bool:
    """Whether onestep* is among the methods (``None``: the defaults, which hold it)."""
    return methods is None or "onestep*" in methods


def onestep_tokens_of_pairs(pairs: str, teacher, *, continuous: bool):
    """``(token_table, token_pool)``: onestep*'s tokens of a finished pair folder (a
    ``ClassTokenTable`` for a codebook teacher, the pairs' tokens and labels for a continuous
    one). What the folder cannot give (a class without pairs) is an error of that method."""
    from dd.baselines import token_table_from_pairs
    from dd.data import load_pairs

    try:
        if continuous:  # onestep* draws the pairs' own tokens (dd.continuous_sampling)
            pair_set = load_pairs(pairs, teacher_fingerprint=teacher.fingerprint())
            return None, (pair_set.tokens, pair_set.labels)
        return token_table_from_pairs(pairs, teacher), None
    except ValueError as error:
        raise ValueError(
            f"method 'onestep*': {error} (the other methods need no such tokens: leave "
            "onestep* out of the methods to run them)"
        ) from error


def build_setup(
    student_path: str | None,
    teacher_spec: TeacherSpec | None,
    pairs: str | None,
    *,
    methods: list[str] | None = None,
    device: torch.device | str = "cpu",
    precision: Precision = "32-true",
) -> Setup:
    """The samplers of a recipe. ``pairs`` gives the teacher's sampling settings and, when
    ``methods`` asks for onestep* (``None``: the defaults, which do), its tokens; a folder that
    cannot give those fails as method 'onestep*', and fails no other method."""
    from dd.checkpoint import load_student, read_card, student_folder
    from dd.data import finished_manifest, pair_sampling
    from dd.evaluate import Samplers
    from dd.teacher_spec import load_teacher
    from teachers.tiny import TINY_SAMPLING
    from teachers.tiny.registry import tiny_teacher_data

    student = None
    if student_path is not None:
        folder = student_folder(student_path)  # the one resolution of a name or a folder
        # A teacher spec beside a student replaces its card's (the checkpoints have moved;
        # card_teacher_defaults completed it from the card); load_student refuses a teacher of
        # another fingerprint.
        if teacher_spec is None:
            given = load_card_teacher(folder, device=device)
        else:
            given = load_teacher(teacher_spec, device=device)
        student = load_student(folder, teacher=given, device=device)
        teacher_spec = teacher_spec or TeacherSpec(**read_card(folder)["teacher"])
        teacher = student.teacher
    else:
        teacher = load_teacher(teacher_spec, device=device)
    from teachers.protocol import ContinuousTeacher

    continuous = isinstance(teacher, ContinuousTeacher)
    token_table = token_pool = sampling = None  # None: the teacher's default_sampling
    if pairs is not None:
        # Pairs of another teacher are refused by fingerprint first: their sampling settings
        # may be of the other kind (a FAR folder's head_steps for a LlamaGen student).
        finished_manifest(pairs, teacher_fingerprint=teacher.fingerprint())
        sampling = pair_sampling(pairs, continuous=continuous)
        if asks_for_onestep(methods):
            token_table, token_pool = onestep_tokens_of_pairs(pairs, teacher, continuous=continuous)
    elif student is not None:  # the settings of its pairs (recorded, or the tiny teacher's)
        sampling = student.teacher_sampling
    elif teacher_spec.tiny_dir is None:  # the shipped tiny teachers' tuned settings
        sampling = TINY_SAMPLING.get(teacher_spec.tiny)
    samplers = Samplers(
        teacher, sampling or teacher.default_sampling(), student, token_table, token_pool,
        precision,
    )  # fmt: skip
    name = teacher_spec.tiny or teacher_spec.family
    data = None
    if teacher_spec.tiny is not None:  # a teacher of another --out folder too (tiny_dir)
        data = tiny_teacher_data(teacher_spec.tiny, weights_dir=teacher_spec.tiny_dir)
    return Setup(samplers, name, preset_key_of(teacher_spec), data)


def scored_image_size(teacher, image_size: int | None) -> tuple[int, int]:
    """``(height, width)`` of the images ``dd eval`` scores: ``image_size`` square when given
    (every generated image is resized to it), else the teacher's own (one dummy sample decoded:
    known before any sampling)."""
    from teachers.protocol import decoded_image_shape

    if image_size is not None:
        return image_size, image_size
    _, height, width = decoded_image_shape(teacher)
    return height, width


def pixels(size: tuple[int, int]) -> str:
    """``(height, width)`` as ``WxH`` px, as the reference folder's errors write sizes."""
    return f"{size[1]}x{size[0]} px"


def check_reference_size(
    reference_size: tuple[int, int], scored_size: tuple[int, int], name: str
) -> None:
    """Refuse to compare images of two sizes: FID then measures the resize as much as the
    model (a 384 px LlamaGen scored against ImageNet 256 is not the official protocol)."""
    if tuple(reference_size) != tuple(scored_size):
        raise ValueError(
            f"the reference {name} holds {pixels(reference_size)} images but the generated "
            f"images would be scored at {pixels(scored_size)}: set image_size (metric "
            "inception) to resize the generated images to the reference's size, or give a "
            f"reference of {pixels(scored_size)} images"
        )


def size_json(size: tuple[int, int] | None) -> dict[str, int] | None:
    return None if size is None else {"height": int(size[0]), "width": int(size[1])}


def build_space_and_reference(
    recipe: EvalRecipe,
    tiny_data: str | None,
    *,
    scored_size: tuple[int, int],
    device: torch.device | str = "cpu",
):
    """(feature space, reference, description) for a recipe. ``tiny_data``: the data set of a
    tiny teacher (``Setup.tiny_data``), which the digits metric must be. ``scored_size``
    (``scored_image_size``): a reference whose images are of another size is refused before
    they are embedded (minutes for an ADM batch on the CPU) and before any sampling; one of
    statistics alone has no size to check."""
    from dd.evaluate import Reference
    from dd.metrics.generative import load_stats_npz
    from dd.metrics.spaces import (
        DigitsSpace,
        InceptionSpace,
        NpzImages,
        image_folder_files,
        image_folder_size,
        iter_image_folder,
    )
    from teachers.data import DIGITS_DATA_NAME

    tiny = tiny_data is not None
    metric = recipe.metric if recipe.metric != "auto" else ("digits" if tiny else "inception")
    if metric == "digits" and tiny and tiny_data != DIGITS_DATA_NAME:
        # its classifier and reference are the digits': a teacher of other images would be
        # scored against digits, and its labels read as digit classes
        raise ValueError(
            f"the teacher was trained on the data set {tiny_data!r}, but the digits metric "
            f"scores against the {DIGITS_DATA_NAME!r} data and its classes: set metric: inception "
            "with a reference folder of that data"
        )
    if metric == "digits" and recipe.inception_weights is not None:
        raise ValueError(
            "inception_weights is given but the metric is digits (the tiny teachers' default): "
            "set metric: inception to score in Inception space, or drop inception_weights"
        )
    if metric == "digits" and recipe.image_size is not None:
        raise ValueError(
            "image_size is given but the metric is digits (the tiny teachers' default), whose "
            "classifier reads the images as generated: set metric: inception, or drop image_size"
        )
    if metric == "digits":
        from teachers.data import load_digits_split

        split = recipe.reference or "train"
        if split not in DIGITS_SPLITS:
            raise ValueError(f"digits reference must be one of {DIGITS_SPLITS}, got {split!r}")
        images = load_digits_split(split).images_01()
        check_reference_size(tuple(images.shape[-2:]), scored_size, f"digits split {split}")
        space = DigitsSpace()
        return space, Reference.from_images(space, images), split
    # the missing-file error comes first
    space = InceptionSpace(recipe.inception_weights, device=device)
    if recipe.reference is None:
        raise ValueError(
            "metric inception needs a reference: give --reference with an image folder or an "
            ".npz (mu, sigma; the ADM format)"
        )
    path = Path(recipe.reference)
    if path.suffix.lower() == ".npz":
        stats = load_stats_npz(str(path), space.feature_dim)
        if not NpzImages.holds_images(path):  # statistics only: FID, no precision/recall
            return space, Reference(stats), str(path)
        # An ADM reference batch: FID from its published mu and sigma, precision/recall from
        # its images' features (one Inception pass over them, as the ADM evaluator does).
        images = NpzImages(path)  # its header only, so far
        size = images.shape[1:3]  # [N, H, W, 3]
        check_reference_size(size, scored_size, str(path))
        reference = Reference.from_batches(
            space, images.batches(), stats, size=size,
            total=images.shape[0], progress=recipe.progress_bar,
        )  # fmt: skip
        return space, reference, str(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"reference {path} is a file but not an .npz: give an image folder or an .npz "
            "with mu and sigma"
        )
    size = image_folder_size(path)
    check_reference_size(size, scored_size, str(path))
    reference = Reference.from_batches(
        space, iter_image_folder(path), None, size=size,
        total=len(image_folder_files(path)), progress=recipe.progress_bar,
    )  # fmt: skip
    return space, reference, str(path)


def fid_rows_of(labels: torch.Tensor, fid_per_class: int | None, num_classes: int):
    """The rows FID and precision/recall are computed on: the first ``fid_per_class`` samples
    of each class, or None (all of them)."""
    if fid_per_class is None:
        return None
    return torch.cat(
        [(labels == c).nonzero().flatten()[:fid_per_class] for c in range(num_classes)]
    )


def fid_sample_source(recipe: EvalRecipe, num_classes: int) -> str:
    """Where the FID sample count comes from, for the errors and warnings that give it."""
    per_class = recipe.fid_per_class or recipe.num_per_class
    option = "num_per_class" if recipe.fid_per_class is None else "fid_per_class"
    return f"{option} {per_class} x {num_classes} classes"


def check_sample_counts(
    recipe: EvalRecipe, num_samples: int, fid_samples: int, classes: int
) -> None:
    """Counts the teacher's class count decides, refused before the reference is embedded and
    before any sampling: they failed only in the scoring of the first method, hours into a
    real teacher's run."""
    if recipe.is_splits > num_samples:
        raise ValueError(
            f"is_splits {recipe.is_splits} is more than the {num_samples} samples "
            f"(num_per_class {recipe.num_per_class} x {classes} classes): give is_splits <= "
            f"{num_samples}"
        )
    if fid_samples < 2:
        raise ValueError(
            f"FID needs 2 samples or more; {fid_sample_source(recipe, classes)} gives {fid_samples}"
        )


def check_reference_counts(
    recipe: EvalRecipe, reference, reference_name: str, fid_samples: int, classes: int
) -> None:
    """Precision/recall (when the reference has features) need more than k samples on each
    side; refused before any sampling (they failed after the first method was sampled)."""
    from dd.metrics.generative import PR_NEIGHBOURS as k

    if reference.features is None:  # statistics alone: no precision/recall to compute
        return
    held = reference.features.shape[0]
    if held <= k:
        raise ValueError(
            f"the reference {reference_name} holds {held} images: precision/recall with k = {k} "
            f"need more than {k}"
        )
    if fid_samples <= k:
        raise ValueError(
            f"precision/recall with k = {k} need more than {k} generated samples; "
            f"{fid_sample_source(recipe, classes)} gives {fid_samples}"
        )


def sample_count_warnings(
    recipe: EvalRecipe, reference, fid_samples: int, classes: int
) -> list[str]:
    """One-line warnings about counts that are allowed but bias the scores."""
    dimension = int(reference.stats.mu.shape[0])
    if fid_samples > dimension:
        return []
    return [
        f"FID of {fid_samples} samples ({fid_sample_source(recipe, classes)}) in "
        f"{dimension}-d features: at or below the dimension their covariance is singular and "
        "FID is biased high, far above the same model's with more samples (docs/evaluation.md, "
        "fid_per_class)"
    ]


def build_reference(recipe: EvalRecipe, tiny_data, scored_size, device):
    """``build_space_and_reference``, with a reference of fewer than two images named (its
    error spoke of features and did not say they were the reference's)."""
    from dd.metrics.generative import TooFewFeatures

    try:
        return build_space_and_reference(recipe, tiny_data, scored_size=scored_size, device=device)
    except TooFewFeatures as error:
        raise ValueError(
            f"the reference {recipe.reference or 'train'} holds too few images for FID "
            f"({error}): give one of 2 images or more (more than 3 for precision/recall)"
        ) from None


TIMING_KEYS = (
    "one_forward_seconds_per_image",
    "alternated_seconds_per_image",
    "to_forward",
    "timing_rounds",
)


def run_eval(recipe: EvalRecipe, on_row: Callable[[dict], None] | None = None) -> dict:
    """The report (docs/evaluation.md, "The JSON report"). ``on_row(report)``: after each
    finished method, the report so far (``complete`` false, the timing keys null: the
    timing runs after the last method)."""
    from dd.evaluate import evaluate_methods, forward_seconds_per_image, parse_methods

    if recipe.output is not None:  # refused before anything is loaded, not after the run
        check_output(Path(recipe.output), folder=False, purpose=REPORT_PURPOSE)
    if recipe.num_threads is not None:
        torch.set_num_threads(recipe.num_threads)
    device = resolve_device(recipe.device)  # refused before anything is loaded
    setup = build_setup(
        recipe.student, recipe.teacher, recipe.pairs, methods=recipe.methods, device=device,
        precision=recipe.precision,
    )  # fmt: skip
    samplers = setup.samplers
    teacher = samplers.teacher
    classes = teacher.num_classes
    labels = torch.arange(classes).repeat_interleave(recipe.num_per_class)
    fid_rows = fid_rows_of(labels, recipe.fid_per_class, classes)
    fid_samples = int(labels.shape[0] if fid_rows is None else fid_rows.shape[0])
    check_sample_counts(recipe, int(labels.shape[0]), fid_samples, classes)
    scored_size = scored_image_size(teacher, recipe.image_size)
    space, reference, reference_name = build_reference(recipe, setup.tiny_data, scored_size, device)
    check_reference_counts(recipe, reference, reference_name, fid_samples, classes)
    warnings = sample_count_warnings(recipe, reference, fid_samples, classes)
    for warning in warnings:  # now, not after hours of sampling
        print(f"dd eval: warning: {warning}", file=sys.stderr)
    specs = method_specs(recipe.methods, samplers)
    methods = parse_methods(specs, samplers, preset_key=setup.preset_key)
    report = {
        "complete": False,
        "teacher": setup.teacher_name,
        "family": teacher.family,
        "num_tokens": teacher.geometry.num_tokens,
        "num_ar_steps": teacher.geometry.num_steps,
        **dict.fromkeys(TIMING_KEYS),  # measured after the last method
        "sampling": dataclasses.asdict(samplers.sampling),
        "feature_space": space.name,
        "reference": reference_name,
        # (height, width) of the images scored (after image_size's resize) and of the
        # reference's images (null for an .npz of statistics alone: its size is unknown).
        "scored_image_size": size_json(scored_size),
        "reference_image_size": size_json(reference.size),
        "num_samples": int(labels.shape[0]),
        "fid_samples": fid_samples,
        "seed": recipe.seed,
        "device": str(device),
        "precision": recipe.precision,
        "threads": torch.get_num_threads(),
        "warnings": warnings,
        "rows": [],
    }

    def row_done(row: dict) -> None:
        report["rows"].append(row)
        if on_row is not None:
            on_row(report)

    evaluate_methods(
        methods,
        samplers,
        labels,
        space,
        reference,
        seed=recipe.seed,
        batch_size=recipe.batch_size,
        fid_rows=fid_rows,
        is_splits=recipe.is_splits,
        image_size=recipe.image_size,
        progress=recipe.progress_bar,
        on_row=row_done,
    )
    timing = forward_seconds_per_image(samplers, methods, recipe.batch_size, seed=recipe.seed)
    report["one_forward_seconds_per_image"] = timing.seconds_per_image["forward"]
    report.update(timing.as_json())
    report["complete"] = True
    return report


def show(value, scale=1.0, digits=2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


TABLE_HEAD = (
    "| method | steps | FID | IS | precision | recall | class acc. % | ms/image |",
    "|---|---|---|---|---|---|---|---|",
)


def table_row(row: dict) -> str:
    return (
        f"| {row['name']} | {row['steps']} | {show(row['fid'])} | "
        f"{show(row['inception_score'])} | {show(row['precision'])} | {show(row['recall'])} | "
        f"{show(row['class_accuracy'], 100, 1)} | {show(row['seconds_per_image'], 1000)} |"
    )


def timing_line(result: dict) -> str:
    """The teacher forward and the alternated DD timings in one line, printed under the table:
    they are timed after the last method, and the rows are printed as their methods finish."""
    forward_ms = 1000 * result["one_forward_seconds_per_image"]
    alternated = result["alternated_seconds_per_image"]
    model_calls = "".join(
        f"; {name if name == 'decode' or name.endswith('all-in') else name + ' model calls'} "
        f"{1000 * alternated[name]:.2f} ms/image ({ratio['median']:.2f}x, quartiles "
        f"{ratio['low']:.2f}x-{ratio['high']:.2f}x)"
        for name, ratio in result["to_forward"].items()
    )
    rounds = result["timing_rounds"]
    alternation = f" (medians of {rounds} rounds timed alternately with it)" if model_calls else ""
    return (
        f"{result['teacher']}: one full-sequence teacher forward {forward_ms:.2f} ms/image"
        f"{model_calls}{alternation}"
    )


def write_report(path: Path, result: dict) -> None:
    """The JSON report, atomically: a reader (or a run stopped while writing) sees the old
    file or the new one, never part of one."""
    from data_gen.shards import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class RowsAsTheyFinish:
    """What ``main`` does after each finished method: its table line on stdout, and, with
    ``output``, the report so far written over the file (``complete`` false), so that a
    later method's failure or a stopped run keeps the rows already paid for."""

    def __init__(self, output: str | None) -> None:
        self.output = None if output is None else Path(output)
        self.printed = 0  # rows on stdout
        self.saved = 0  # rows in the report file

    def print_rows(self, rows: list[dict]) -> None:
        from tqdm.auto import tqdm

        lines = [*TABLE_HEAD] if self.printed == 0 else []
        lines += [table_row(row) for row in rows[self.printed :]]
        for line in lines:
            tqdm.write(line, file=sys.stdout)  # above the progress bars, not through them
        sys.stdout.flush()
        self.printed = len(rows)

    def row_done(self, report: dict) -> None:
        self.print_rows(report["rows"])
        if self.output is None:
            return
        try:
            write_report(self.output, report)
        except OSError as error:  # the run goes on: its rows are on stdout
            print(
                f"dd eval: could not write the report so far to {self.output} ({error}); "
                "the evaluation goes on and the table holds its rows",
                file=sys.stderr,
            )
            return
        self.saved = len(report["rows"])

    def kept(self) -> str:
        """Where the rows finished before a failure are, for its one-line error."""
        if self.saved:
            return (
                f" (the report {self.output} holds the {plural(self.saved, 'finished row')}, "
                '"complete": false)'
            )
        if self.printed:
            return f" (the table above holds the {plural(self.printed, 'finished row')})"
        return ""


def main(argv: list[str]) -> int:
    recipe, _ = parse_recipe(EvalRecipe, argv, prog="dd eval", defaults_for=card_teacher_defaults)
    rows = RowsAsTheyFinish(recipe.output)
    try:
        result = run_eval(recipe, on_row=rows.row_done)
    # OSError: files that are missing or unreadable, a full or read-only disk: one line
    except (OSError, ValueError) as error:
        print(f"dd eval: {error}{rows.kept()}", file=sys.stderr)
        return 1
    # the rows not printed yet and the timing, first: on stdout even if the write fails
    rows.print_rows(result["rows"])
    print(timing_line(result))
    if recipe.output is not None:
        try:
            write_report(Path(recipe.output), result)
        except OSError as error:
            print(
                f"dd eval: could not write the report {recipe.output} ({error}); the table "
                "above holds its scores",
                file=sys.stderr,
            )
            return 1
    return 0
