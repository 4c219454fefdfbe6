"""Student checkpoints (dd/checkpoint.py): round trip, the teacher check, bad paths."""

import json

import pytest
import torch

import dd
from dd.checkpoint import CARD_FILE, save_student
from dd.student import DDStudent
from dd.teacher_spec import TeacherSpec
from teachers.tiny import load_tiny_teacher


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    teacher = load_tiny_teacher("var-digits")
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, 3), teacher.geometry.step_ranges[3][0])
    with torch.no_grad():  # move away from the initialisation so the round trip means something
        for parameter in student.backbone.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    folder = save_student(
        student, tmp_path_factory.mktemp("student"), TeacherSpec(tiny="var-digits"),
        record={"seed": 0},
    )  # fmt: skip
    return student, folder


def test_round_trip_gives_the_same_samples(saved):
    student, folder = saved
    loaded = dd.load_student(folder)
    assert loaded.timesteps == student.timesteps and loaded.split_token == student.split_token
    labels = torch.arange(4)
    first = dd.sample(student, labels, steps=2, generator=torch.Generator().manual_seed(0))
    again = dd.sample(loaded, labels, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["teacher"] == {"tiny": "var-digits"} and card["record"] == {"seed": 0}


def test_the_noise_logit_prior_round_trips(tmp_path):
    teacher = load_tiny_teacher("llamagen-digits")
    student = DDStudent(teacher, (0, 20), 20, noise_logit_scale=2.5)
    with torch.no_grad():
        student.noise_logit_scale.fill_(3.25)
    folder = save_student(student, tmp_path, TeacherSpec(tiny="llamagen-digits"))
    loaded = dd.load_student(folder, teacher=teacher)
    assert float(loaded.noise_logit_scale) == 3.25
    labels = torch.arange(3)
    first = dd.sample(student, labels, steps=1, generator=torch.Generator().manual_seed(0))
    again = dd.sample(loaded, labels, steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again)


def test_a_student_of_another_teacher_is_refused(saved):
    _, folder = saved
    other = load_tiny_teacher("llamagen-digits")
    with pytest.raises(ValueError, match="only works with the teacher it was distilled from"):
        dd.load_student(folder, teacher=other)


def test_unknown_names_and_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="neither a student checkpoint folder"):
        dd.load_student(tmp_path)
    with pytest.raises(ValueError, match="shipped"):
        dd.load_student("no-such-student")


@pytest.mark.parametrize("name", ["llamagen-digits", "var-digits"])
def test_shipped_students_load_by_name_and_draw_recognisable_digits(name):
    """The shipped tiny students (dd/weights/<name>, trained by recipes/distill_tiny_*.yaml):
    1-step samples of 5 per class are recognised by the digits classifier at >= 80% (measured
    on 1,000 samples per seed: docs/distillation.md, "Quality")."""
    from dd.metrics.digits import class_accuracy

    student = dd.load_student(name)
    assert student.noise_logit_scale is not None
    assert student.split_token == student.geometry.num_tokens
    labels = torch.arange(10).repeat(5)
    images = dd.sample(student, labels, steps=1, generator=torch.Generator().manual_seed(0))
    assert images.shape[0] == 50 and 0.0 <= images.min() and images.max() <= 1.0
    assert class_accuracy(images, labels) >= 0.8
