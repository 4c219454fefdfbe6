"""The DD student (dd/student.py) on both tiny teachers: Eq. 6 at every AR step, the teacher's
function at initialisation where both compute the same thing, gradients, bad input."""

import copy

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


def with_zero_init_filled(student: DDStudent) -> DDStudent:
    """A copy whose zero-initialised parameters (flags, LlamaGen's own-position logits) are
    random: the architecture's dependences, not the initial weights', are what is tested."""
    student = copy.deepcopy(student)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in student.backbone.parameters():
            if not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    return student


def test_predictions_depend_on_their_own_noise_and_not_on_later_noise(teacher, student):
    """Token i's prediction changes with input i (its noise decides it) and not with inputs of
    later AR steps (causality of Eq. 6's model)."""
    student = with_zero_init_filled(student)
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


def test_llamagen_token_logits_start_from_the_teacher_aligned_position():
    """LlamaGen: token i's logits are the teacher's head at position i - 1 (class, x_1..x_{i-1},
    the teacher's inputs for token i) plus a zero-initialised layer of position i. At
    initialisation token 1's logits are the teacher's first-token logits whatever the inputs,
    and no token's logits depend on its own input (float32, 1e-5)."""
    teacher = load_tiny_teacher("llamagen-digits")
    torch.manual_seed(0)
    student = tiny_student(teacher)
    labels, noise, tokens = random_batch(teacher)
    is_data = data_mask(torch.zeros(BATCH_SIZE, dtype=torch.long), noise.shape[1])
    changed = noise.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        logits_BTV, _ = student.backbone(labels, noise, is_data)
        after_BTV, _ = student.backbone(labels, changed, is_data)
        expected = teacher.logits_teacher_forcing(labels, tokens)
    torch.testing.assert_close(logits_BTV[:, 1], expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after_BTV[:, :7], logits_BTV[:, :7], atol=0, rtol=0)
    assert (after_BTV[:, 7] - logits_BTV[:, 7]).abs().max() > 1e-4  # token 7 sees input 6


def test_backbone_options_choose_the_paper_readout_and_are_refused_where_unknown():
    """``teacher_aligned: false`` builds the paper's LlamaGen student (token i's logits at its own
    position, so at initialisation they already depend on input i; no own-position layer); a
    family without options refuses them by name."""
    teacher = load_tiny_teacher("llamagen-digits")
    torch.manual_seed(0)
    paper = DDStudent(teacher, (0,), 64, backbone_options={"teacher_aligned": False})
    assert not hasattr(paper.backbone, "own_position_code")
    assert paper.backbone_options == {"teacher_aligned": False}
    labels, noise, tokens = random_batch(teacher)
    changed = noise.clone()
    changed[:, 5] += 1.0
    boundary = torch.zeros(BATCH_SIZE, dtype=torch.long)
    with torch.no_grad():
        before, _ = paper(labels, noise, boundary, tokens)
        after, _ = paper(labels, changed, boundary, tokens)
    assert torch.equal(before[:, :5], after[:, :5])
    assert (before[:, 5] - after[:, 5]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="does not take the options"):
        DDStudent(load_tiny_teacher("var-digits"), (0,), 0, backbone_options={"x": True})


def test_least_squares_init_recovers_a_linear_map():
    """``input_proj``'s initialisation fits codes -> embeddings; on an exactly affine target it
    is exact (1e-5)."""
    from teachers.llamagen.student import init_as_least_squares

    generator = torch.Generator().manual_seed(0)
    inputs_VC = torch.randn(64, 8, generator=generator)
    weight_DC, bias_D = (
        torch.randn(96, 8, generator=generator),
        torch.randn(96, generator=generator),
    )
    layer = torch.nn.Linear(8, 96)
    init_as_least_squares(layer, inputs_VC, inputs_VC @ weight_DC.T + bias_D)
    torch.testing.assert_close(layer.weight.detach(), weight_DC, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.bias.detach(), bias_D, atol=1e-5, rtol=1e-5)


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


def perturbed_student(teacher, options: dict | None = None) -> DDStudent:
    """A tiny student with a noise-logit prior whose zero-initialised parts (flags, the
    own-position term) are made to matter: every weight moved by a little noise."""
    torch.manual_seed(3)
    second = teacher.geometry.num_steps // 2
    student = DDStudent(
        teacher,
        (0, second),
        teacher.geometry.step_ranges[second][0],
        noise_logit_scale=1.5,
        backbone_options=options,
    ).eval()
    with torch.no_grad():
        for parameter in student.backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return student


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("llamagen-digits", None),
        ("llamagen-digits", {"teacher_aligned": False}),
        ("var-digits", None),
    ],
)
def test_heads_at_given_tokens_are_the_full_outputs_slices(name, options):
    """``logits_tokens`` / ``embedding_tokens``: each head at its tokens only gives the full
    outputs' slices (prior included; LlamaGen's shifted readout and own-position term across
    the slice's start), empty ranges included. Tolerance 1e-5: a product over fewer rows may
    round differently."""
    teacher = load_tiny_teacher(name)
    student = perturbed_student(teacher, options)
    labels, noise, tokens = random_batch(teacher, seed=4)
    n = teacher.geometry.num_tokens
    for start in (0, teacher.geometry.step_ranges[2][0]):
        boundary = torch.full((BATCH_SIZE,), start)
        inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
        with torch.no_grad():
            full_logits, full_embeddings = student(labels, inputs, boundary, tokens)
        spans = [
            (range(start, n), range(start, n)),
            (range(start, start + 5), range(start + 3, n)),
            (range(start + 1, start + 2), range(n, n)),
            (range(n, n), range(start, start)),
        ]
        for logits_tokens, embedding_tokens in spans:
            with torch.no_grad():
                logits, embeddings = student(
                    labels,
                    inputs,
                    boundary,
                    tokens,
                    logits_tokens=logits_tokens,
                    embedding_tokens=embedding_tokens,
                )
            assert logits.shape == (BATCH_SIZE, len(logits_tokens), teacher.vocab_size)
            assert embeddings.shape == (BATCH_SIZE, len(embedding_tokens), teacher.code_dim)
            at_logits = slice(logits_tokens.start, logits_tokens.stop)
            at_embeddings = slice(embedding_tokens.start, embedding_tokens.stop)
            torch.testing.assert_close(logits, full_logits[:, at_logits], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                embeddings, full_embeddings[:, at_embeddings], rtol=1e-5, atol=1e-5
            )


def test_head_tokens_before_the_boundary_or_outside_the_sequence_are_refused(teacher, student):
    labels, noise, tokens = random_batch(teacher)
    n = teacher.geometry.num_tokens
    start = teacher.geometry.step_ranges[1][0]
    boundary = torch.full((BATCH_SIZE,), start)
    inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
    for logits_tokens, message in [
        (range(0, n), "start before a boundary"),
        (range(start, n + 1), "within"),
        (range(start, n, 2), "step 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            student(labels, inputs, boundary, tokens, logits_tokens=logits_tokens)
    with pytest.raises(ValueError, match="start before a boundary"):  # None: all n tokens
        student(labels, inputs, boundary, tokens, logits_tokens=range(start, n))
