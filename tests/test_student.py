"""The DD student (dd/student.py) on both tiny teachers: Eq. 6 at every AR step, the teacher's
function at initialisation where both compute the same thing, gradients, bad input."""

import pytest
import torch

from dd.student import DDStudent
from dd.trajectory import data_mask, trajectory_input
from teachers.tiny import load_tiny_teacher

TEACHERS = ("llamagen-digits", "var-digits")
BATCH_SIZE = 3


@pytest.fixture(scope="module", params=TEACHERS)
def teacher(request):
    return load_tiny_teacher(request.param)


# Tiny-teacher test settings: a second timestep half-way through the AR steps, split there too.
def tiny_student(teacher) -> DDStudent:
    second = teacher.geometry.num_steps // 2
    return DDStudent(teacher, (0, second), teacher.geometry.step_ranges[second][0])


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(0)
    return tiny_student(teacher)


def random_batch(teacher, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    vocab, width = teacher.codebook.shape
    n = teacher.geometry.num_tokens
    labels = torch.randint(teacher.num_classes, (BATCH_SIZE,), generator=generator)
    noise = torch.randn(BATCH_SIZE, n, width, generator=generator)
    tokens = torch.randint(vocab, (BATCH_SIZE, n), generator=generator)
    return labels, noise, tokens


def test_teacher_stays_frozen_and_the_student_trains(teacher, student):
    assert all(p.requires_grad for p in student.backbone.parameters())
    student.train()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in student.backbone.parameters()}  # copies
    assert set(student.student_state_dict()) == set(student.backbone.state_dict())


def test_eq6_holds_at_every_ar_step(teacher, student):
    labels, noise, tokens = random_batch(teacher)
    for step, (start, _) in enumerate(teacher.geometry.step_ranges):
        boundary = torch.full((BATCH_SIZE,), start)
        inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
        with torch.no_grad():
            logits, embeddings = student(labels, inputs, boundary, tokens)
        n, vocab = teacher.geometry.num_tokens, teacher.codebook.shape[0]
        assert logits.shape == (BATCH_SIZE, n, vocab), step
        assert torch.equal(logits[:, :start].argmax(-1), tokens[:, :start]), step
        assert torch.equal(embeddings[:, :start], inputs[:, :start]), step
        assert torch.isfinite(logits[:, start:]).all() and torch.isfinite(embeddings).all(), step


def test_initial_student_computes_the_teachers_first_step_logits(teacher, student):
    """Position 0 (class / start) sees only the label: at initialisation its logits are the
    teacher's unguided first-step logits, whatever the inputs (float32, 1e-5)."""
    labels, noise, tokens = random_batch(teacher)
    boundary = torch.zeros(BATCH_SIZE, dtype=torch.long)
    with torch.no_grad():
        logits_BTV, _ = student.backbone(labels, noise, data_mask(boundary, noise.shape[1]))
        expected = teacher.logits_teacher_forcing(labels, tokens)
    first = teacher.geometry.step_ranges[0][1]
    torch.testing.assert_close(logits_BTV[:, :first], expected[:, :first], atol=1e-5, rtol=1e-5)


def test_predictions_depend_on_their_own_noise_and_not_on_later_noise(teacher, student):
    """Token i's prediction changes with input i (its noise decides it) and not with inputs of
    later AR steps (causality of Eq. 6's model)."""
    labels, noise, tokens = random_batch(teacher)
    boundary = torch.zeros(BATCH_SIZE, dtype=torch.long)
    start, end = teacher.geometry.step_ranges[1]
    changed = noise.clone()
    changed[:, start] += 1.0
    with torch.no_grad():
        before, _ = student(labels, noise, boundary, tokens)
        after, _ = student(labels, changed, boundary, tokens)
    assert torch.equal(before[:, :start], after[:, :start])
    assert (before[:, start] - after[:, start]).abs().max() > 1e-4


def test_gradients_reach_both_heads(teacher, student):
    labels, noise, tokens = random_batch(teacher)
    boundary = torch.zeros(BATCH_SIZE, dtype=torch.long)
    logits, embeddings = student(labels, noise, boundary, tokens)
    (logits.logsumexp(-1).mean() + embeddings.square().mean()).backward()
    backbone = student.backbone
    assert backbone.embedding_out.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    student.zero_grad(set_to_none=True)


def test_bad_input_is_refused(teacher, student):
    labels, noise, tokens = random_batch(teacher)
    boundary = torch.zeros(BATCH_SIZE, dtype=torch.long)
    with pytest.raises(ValueError, match="class labels"):
        student(labels + teacher.num_classes, noise, boundary, tokens)
    with pytest.raises(ValueError, match="inputs must be"):
        student(labels, noise[..., :-1], boundary, tokens)
    with pytest.raises(ValueError, match="batch size"):
        student(labels, noise, boundary[:-1], tokens)
    with pytest.raises(ValueError, match="tokens"):
        student(labels, noise, boundary, tokens[:, :-1])
    with pytest.raises(ValueError, match="not an AR step boundary"):
        DDStudent(teacher, (0, teacher.geometry.num_steps), 0)
    with pytest.raises(ValueError, match="split_token"):
        DDStudent(teacher, (0,), teacher.geometry.num_tokens + 1)


def test_the_noise_logit_prior_adds_kappa_times_code_similarity(teacher):
    """``noise_logit_scale``: predicted positions' logits = the paper student's + kappa <x_i, c_j>
    (same weights otherwise), prefix positions untouched (Eq. 6); kappa is trained."""
    torch.manual_seed(0)
    plain = tiny_student(teacher)
    with_prior = DDStudent(plain.teacher, plain.timesteps, plain.split_token, noise_logit_scale=2.5)
    with_prior.backbone.load_state_dict(plain.backbone.state_dict())
    labels, noise, tokens = random_batch(teacher, seed=1)
    start = teacher.geometry.step_ranges[1][0]
    boundary = torch.full((BATCH_SIZE,), start)
    inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
    with torch.no_grad():
        base, _ = plain(labels, inputs, boundary, tokens)
        prior, _ = with_prior(labels, inputs, boundary, tokens)
    expected = base[:, start:] + 2.5 * inputs[:, start:] @ teacher.codebook.float().T
    torch.testing.assert_close(prior[:, start:], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(prior[:, :start], base[:, :start])
    assert with_prior.noise_logit_scale in with_prior.trainable_parameters()
    assert "noise_logit_scale" in with_prior.student_state_dict()
    with pytest.raises(ValueError, match="noise-logit prior"):
        plain.load_student_state_dict(with_prior.student_state_dict())
