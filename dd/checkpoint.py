"""Student checkpoints: safetensors weights plus a JSON card naming the teacher.

A checkpoint folder holds ``student.safetensors`` (the backbone's weights only; never the
teacher's) and ``student.json``: the teacher's recipe spec and fingerprint, the timesteps, the
split token and whatever the trainer records (recipe, seed, pairs, time). Loading rebuilds the
teacher from its spec (or takes the one given), refuses a teacher whose fingerprint differs,
and loads the weights strictly. Both files are written atomically (temporary file, rename).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import torch

from dd.student import DDStudent
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.protocol import (
    ContinuousSamplingConfig,
    ContinuousTeacher,
    SamplingConfig,
    Teacher,
)

WEIGHTS_FILE = "student.safetensors"
CARD_FILE = "student.json"
CARD_FORMAT = 1


def write_atomically(path: Path, write) -> None:
    """``write(temporary)``, synced, then renamed over ``path``: a crash leaves the old file or
    the new one, never part of one; the temporary's name is this call's own.
    Its mode is that of a file opened under the umask: ``mkstemp`` and safetensors'
    ``save_file`` both create 0600 files, which left students unreadable to the rest of a
    team on shared storage."""
    temporary = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial"))
    try:
        with open(temporary, "x"):  # created as any file of this process is
            pass
        mode = stat.S_IMODE(os.stat(temporary).st_mode)
        write(temporary)
        os.chmod(temporary, mode)
        with open(temporary, "rb") as handle:  # on disk before the rename makes it the file
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_student(
    student: DDStudent,
    folder: str | Path,
    teacher_spec: TeacherSpec,
    *,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/student.safetensors`` and ``folder/student.json``; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in student.student_state_dict().items()}
    sampling = student.teacher_sampling
    card = {
        "format": CARD_FORMAT,
        "family": student.teacher.family,
        "teacher": card_teacher(teacher_spec),
        "teacher_fingerprint": student.teacher.fingerprint(),
        "timesteps": list(student.timesteps),
        "split_token": student.split_token,
        "noise_logit_prior": student.noise_logit_scale is not None,
        "sampling_noise_logit_scale": student.sampling_noise_logit_scale,
        "backbone_options": student.backbone_options,
        "teacher_sampling": None if sampling is None else dataclasses.asdict(sampling),
        "record": record or {},
    }
    # The card last, and the old one removed first: a save interrupted between the two files
    # leaves a folder without a card (not a student, which dd train rebuilds from its last
    # checkpoint), never new weights under an old card.
    (folder / CARD_FILE).unlink(missing_ok=True)
    write_atomically(folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    write_atomically(
        folder / CARD_FILE, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=1) + "\n")
    )
    return folder


def card_teacher(spec: TeacherSpec) -> dict[str, Any]:
    """The card's teacher spec: its checkpoint paths and a tiny teacher's folder absolute (a
    recipe's relative paths would resolve against wherever the student is later used)."""
    card = {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}
    for key in ("checkpoint", "tokenizer_checkpoint", "tiny_dir"):
        if key in card:
            card[key] = os.path.abspath(card[key])
    return card


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a student checkpoint: {path} is missing")
    card = json.loads(path.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path}: unknown student card format {card.get('format')!r}")
    return card


def load_student_folder(
    folder: str | Path, *, teacher: Teacher | None = None, device: torch.device | str = "cpu"
) -> DDStudent:
    """The student saved in ``folder``, over ``teacher`` (default: rebuilt from its spec)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    card = read_card(folder)
    if teacher is None:
        teacher = load_teacher(TeacherSpec(**card["teacher"]), device=device)
    if teacher.fingerprint() != card["teacher_fingerprint"]:
        raise ValueError(
            f"{folder} was distilled from teacher {card['teacher_fingerprint']} "
            f"({card['teacher']}); the teacher given has fingerprint {teacher.fingerprint()}. "
            "A student only works with the teacher it was distilled from."
        )
    # The prior's initial value is irrelevant: the trained kappa is loaded below.
    scale = 0.0 if card.get("noise_logit_prior", False) else None
    from dd.continuous import student_class  # DDStudent, or ContinuousDDStudent (#13)

    student = student_class(teacher)(
        teacher,
        card["timesteps"],
        card["split_token"],
        noise_logit_scale=scale,
        sampling_noise_logit_scale=card.get("sampling_noise_logit_scale"),
        backbone_options=card.get("backbone_options"),
    )
    state = load_file(str(folder / WEIGHTS_FILE), device=str(teacher.device))
    student.load_student_state_dict(state)
    student.teacher_sampling = card_sampling(card, teacher)
    return student.eval()


def card_sampling(
    card: dict[str, Any], teacher: Teacher | ContinuousTeacher
) -> SamplingConfig | ContinuousSamplingConfig | None:
    """The teacher's sampling of the student's pairs: as recorded in the card; for a card
    written before it was recorded (2026-12-07), a tiny teacher's ``TINY_SAMPLING``, which
    the tiny pair recipes use (``recipes/generate_tiny_*.yaml``); else unknown (``None``)."""
    from dd.data import sampling_from_dict
    from teachers.tiny import TINY_SAMPLING

    recorded = card.get("teacher_sampling")
    if recorded is not None:
        return sampling_from_dict(recorded, continuous=isinstance(teacher, ContinuousTeacher))
    return TINY_SAMPLING.get(card["teacher"].get("tiny"))


# Students distilled by this project's recipes and shipped with it, one folder each.
SHIPPED_STUDENTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_students() -> tuple[str, ...]:
    if not SHIPPED_STUDENTS_DIR.is_dir():
        return ()
    return tuple(
        sorted(p.name for p in SHIPPED_STUDENTS_DIR.iterdir() if (p / CARD_FILE).is_file())
    )


def student_folder(name_or_path: str | Path) -> Path:
    """The checkpoint folder of a shipped student's name, or of a folder written by
    ``save_student``."""
    path = Path(name_or_path)
    if (path / CARD_FILE).is_file():
        return path
    if str(name_or_path) in shipped_students():
        return SHIPPED_STUDENTS_DIR / str(name_or_path)
    raise ValueError(
        f"{name_or_path!r} is neither a student checkpoint folder (with {CARD_FILE}) nor a "
        f"shipped student (shipped: {list(shipped_students())})"
    )


def load_student(
    name_or_path: str | Path,
    *,
    teacher: Teacher | None = None,
    device: torch.device | str = "cpu",
) -> DDStudent:
    """A shipped student by name, or a checkpoint folder written by ``save_student``."""
    return load_student_folder(student_folder(name_or_path), teacher=teacher, device=device)


def initialise_from(student: DDStudent, name_or_path: str | Path) -> dict[str, Any]:
    """Copy a saved student's weights into ``student`` (refused for another teacher, or another
    prior setting); returns what to record: the source, the steps it had been trained for and
    its own record (so a card tells the whole chain of runs)."""
    folder = student_folder(name_or_path)
    source = load_student_folder(folder, teacher=student.teacher, device=student.teacher.device)
    if source.backbone_options != student.backbone_options:  # other layers, or readout
        raise ValueError(
            f"{folder} was trained with student.backbone_options {source.backbone_options} and "
            f"this student is built with {student.backbone_options}: give the card's "
            "backbone_options to train it further"
        )
    student.load_student_state_dict(source.student_state_dict())
    record = read_card(folder).get("record", {})
    return {"student": str(name_or_path), "steps": record.get("steps"), "record": record}
