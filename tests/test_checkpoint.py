"""Student checkpoints (dd/checkpoint.py): round trip, the teacher check, bad paths."""

import dataclasses
import json
import os
import stat

import pytest
import torch

import dd
from dd.checkpoint import CARD_FILE, save_student
from dd.student import DDStudent
from dd.teacher_spec import TeacherSpec
from teachers.data import load_digits_split
from teachers.tiny import load_tiny_teacher, tiny_sampling


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


def test_saved_files_follow_the_umask_and_leave_no_temporary(saved, tmp_path):
    """A student on shared storage is readable by the group and others under umask 022
    (``mkstemp`` made both files 0600)."""
    student, _ = saved
    previous = os.umask(0o022)
    try:
        folder = save_student(student, tmp_path / "shared", TeacherSpec(tiny="var-digits"))
    finally:
        os.umask(previous)
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, "student.safetensors"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


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


def test_the_sampling_kappa_replaces_the_learned_one_when_sampling_only(tmp_path):
    teacher = load_tiny_teacher("llamagen-digits")
    torch.manual_seed(0)
    student = DDStudent(
        teacher, (0, 20), 64, noise_logit_scale=1.75, sampling_noise_logit_scale=2.5
    )
    labels, n = torch.arange(3), teacher.geometry.num_tokens
    inputs, boundary = torch.randn(3, n, 8), torch.full((3,), 20)
    prefix = torch.randint(teacher.vocab_size, (3, n))
    with torch.no_grad():
        learned, _ = student(labels, inputs, boundary, prefix)
        replaced, _ = student(labels, inputs, boundary, prefix, noise_logit_scale=2.5)
    prior = 0.75 * inputs @ teacher.codebook.T  # (2.5 - 1.75) <x_i, c_j>
    torch.testing.assert_close(replaced[:, 20:] - learned[:, 20:], prior[:, 20:], atol=1e-4, rtol=0)
    torch.testing.assert_close(replaced[:, :20], learned[:, :20])  # Eq. 6 prefix: as given
    # dd.sample uses it: the same images as a student whose learned kappa is 2.5; the card keeps it.
    same = DDStudent(teacher, (0, 20), 64, noise_logit_scale=2.5)
    same.load_state_dict(student.state_dict())
    with torch.no_grad():
        same.noise_logit_scale.fill_(2.5)
    folder = save_student(student, tmp_path, TeacherSpec(tiny="llamagen-digits"))
    loaded = dd.load_student(folder, teacher=teacher)
    assert loaded.sampling_noise_logit_scale == 2.5 and float(loaded.noise_logit_scale) == 1.75
    for steps in (1, 2):
        images = [
            dd.sample(s, labels, steps=steps, generator=torch.Generator().manual_seed(0))
            for s in (student, same, loaded)
        ]
        assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    for bad in (
        {"sampling_noise_logit_scale": 2.5},
        {"noise_logit_scale": 2.5, "sampling_noise_logit_scale": 0.0},
    ):
        with pytest.raises(ValueError, match="sampling_noise_logit_scale must be"):
            DDStudent(teacher, (0, 20), 64, **bad)


def test_the_teacher_sampling_of_the_pairs_round_trips_and_drives_alg4(saved, tmp_path):
    """The card keeps the teacher's sampling settings of the student's pairs; ``dd.sample``'s
    Alg. 4 draws the teacher with them when given none. A card written before they were
    recorded: a tiny teacher's ``TINY_SAMPLING`` (what its pair recipes use), else unknown."""
    student, folder = saved
    teacher = student.teacher
    recorded = dataclasses.replace(tiny_sampling("var-digits"), cfg_scale=1.25)
    student.teacher_sampling = recorded
    try:
        folder = save_student(student, tmp_path / "new", TeacherSpec(tiny="var-digits"))
    finally:
        student.teacher_sampling = None
    loaded = dd.load_student(folder, teacher=teacher)
    assert loaded.teacher_sampling == recorded
    labels = torch.arange(4)

    def interleaved(sampling=None):
        generator = torch.Generator().manual_seed(0)
        return dd.sample(loaded, labels, interleave=(1, 3), generator=generator, sampling=sampling)

    assert torch.equal(interleaved(), interleaved(recorded))
    assert not torch.equal(interleaved(), interleaved(teacher.default_sampling()))
    card = json.loads((folder / CARD_FILE).read_text())
    del card["teacher_sampling"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    assert dd.load_student(folder, teacher=teacher).teacher_sampling == tiny_sampling("var-digits")


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
    1- and 2-step samples of 20 per class are recognised by the digits classifier at >= 95%
    and have FID <= 14 against the train split (digits features). Measured at seeds 0-4 for
    both students and both step counts: accuracy 97.5-100%, FID 5.9-9.0; one image repeated
    per class (a collapsed student) reads FID 59.8."""
    from dd.metrics.digits import class_accuracy, frechet_distance

    student = dd.load_student(name)
    assert student.noise_logit_scale is not None
    assert student.split_token == student.geometry.num_tokens
    labels = torch.arange(10).repeat_interleave(20)
    reference = load_digits_split("train").images_01()
    for steps in (1, 2):
        images = dd.sample(student, labels, steps=steps, generator=torch.Generator().manual_seed(0))
        assert images.shape[0] == 200 and 0.0 <= images.min() and images.max() <= 1.0
        assert class_accuracy(images, labels) >= 0.95, steps
        assert frechet_distance(images, reference) <= 14.0, steps
