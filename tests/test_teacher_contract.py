"""One contract for every registered teacher: the same calls on each, the same answers.

Teachers: both shipped tiny teachers (``teachers/weights``) and both official-parity fixture
teachers (``tests/parity.py``), all loaded through the recipe loader ``dd.teacher_spec``.
Tolerances: log-probabilities normalised to 1e-5 (float32 logsumexp); the embedding decode
path equals the token decode path to 1e-5; the KV-cached first step equals teacher forcing
to 1e-4 (the parity tests' tolerance; different kernels sum in a different order).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.protocol import SamplingConfig, Teacher, TeacherSession
from teachers.sampling import sample_tokens
from tests.parity import llamagen_fixture_spec, var_fixture_spec

BATCH_SIZE = 2
NORMALISED_ATOL = 1e-5
DECODE_ATOL = 1e-5
TEACHER_FORCING_ATOL = 1e-4
FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{16}")
# CFG off in every family: constant schedule with scale 1 runs no null half.
UNGUIDED = SamplingConfig(cfg_scale=1.0, cfg_schedule="constant")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models

SPECS = {
    "tiny-llamagen-digits": lambda: TeacherSpec(tiny="llamagen-digits"),
    "tiny-var-digits": lambda: TeacherSpec(tiny="var-digits"),
    "fixture-llamagen": llamagen_fixture_spec,
    "fixture-var": var_fixture_spec,
}


@pytest.fixture(scope="module", params=sorted(SPECS))
def teacher(request) -> Teacher:
    return load_teacher(SPECS[request.param]())


def labels_for(teacher: Teacher) -> torch.Tensor:
    return torch.arange(BATCH_SIZE) % teacher.num_classes


def random_tokens(teacher: Teacher, seed: int = 0) -> torch.Tensor:
    vocab_size = teacher.codebook.shape[0]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, vocab_size, (BATCH_SIZE, teacher.geometry.num_tokens), generator=generator
    )


def session_log_probs(teacher: Teacher, sampling: SamplingConfig | None) -> list[torch.Tensor]:
    """Every step's log-probs, feeding the most likely codes back (a deterministic path)."""
    steps = []
    with teacher.start(labels_for(teacher), sampling) as session:
        assert isinstance(session, TeacherSession)
        for step in range(teacher.geometry.num_steps):
            assert session.step == step
            log_probs = session.next_log_probs()
            assert torch.equal(session.next_log_probs(), log_probs)  # repeated call: same
            steps.append(log_probs)
            session.accept(log_probs.argmax(dim=-1))
    return steps


def test_is_a_frozen_module_in_eval_mode_that_train_does_not_unfreeze(teacher):
    assert isinstance(teacher, nn.Module) and isinstance(teacher, Teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(module.training for module in teacher.modules())
    holder = nn.ModuleDict({"teacher": teacher})
    holder.train()  # e.g. a Lightning system switched to training mode
    assert not any(module.training for module in teacher.modules())
    assert teacher.train() is teacher and not teacher.training
    assert teacher.device == teacher.codebook.device


def test_geometry_is_consistent_with_the_codebook(teacher):
    geometry = teacher.geometry
    assert geometry.num_tokens == sum(geometry.tokens_per_step) > 0
    ranges = geometry.step_ranges
    assert ranges[0][0] == 0 and ranges[-1][1] == geometry.num_tokens
    for (start, end), (next_start, _), count in zip(
        ranges, ranges[1:] + ((ranges[-1][1], None),), geometry.tokens_per_step, strict=True
    ):
        assert end - start == count and end == next_start
    height, width = geometry.image_grid
    assert height * width <= geometry.num_tokens
    codebook = teacher.codebook
    assert codebook.dim() == 2 and codebook.shape[0] > 1 and codebook.shape[1] > 0
    assert teacher.null_class == teacher.num_classes


@pytest.mark.parametrize("sampling", [None, UNGUIDED], ids=["default", "unguided"])
def test_session_yields_normalised_log_probs_of_every_step(teacher, sampling):
    steps = session_log_probs(teacher, sampling)
    vocab_size = teacher.codebook.shape[0]
    for log_probs, count in zip(steps, teacher.geometry.tokens_per_step, strict=True):
        assert log_probs.shape == (BATCH_SIZE, count, vocab_size)
        assert log_probs.dtype == torch.float32
        torch.testing.assert_close(
            log_probs.logsumexp(dim=-1),
            torch.zeros(BATCH_SIZE, count),
            atol=NORMALISED_ATOL,
            rtol=0,
        )
    if sampling is None:  # None is the family default, exactly
        explicit = session_log_probs(teacher, teacher.default_sampling())
        assert all(torch.equal(a, b) for a, b in zip(steps, explicit, strict=True))


def test_accept_refuses_tokens_of_the_wrong_shape_or_type(teacher):
    count = teacher.geometry.tokens_per_step[0]
    vocab_size = teacher.codebook.shape[0]
    bad = [
        torch.zeros(BATCH_SIZE + 1, count, dtype=torch.long),  # batch
        torch.zeros(BATCH_SIZE, count + 1, dtype=torch.long),  # step length
        torch.zeros(BATCH_SIZE, dtype=torch.long),  # [B] is not [B, L_step]
        torch.zeros(BATCH_SIZE, count),  # float
        torch.full((BATCH_SIZE, count), vocab_size),  # out of the codebook
    ]
    with teacher.start(labels_for(teacher)) as session:
        for tokens in bad:
            with pytest.raises(ValueError, match="tokens must be"):
                session.accept(tokens)
        assert session.step == 0  # nothing was accepted
        session.accept(torch.zeros(BATCH_SIZE, count, dtype=torch.long))
        assert session.step == 1


def test_sample_tokens_is_in_range_and_seeded(teacher):
    labels = labels_for(teacher)

    def draw(seed: int) -> torch.Tensor:
        return sample_tokens(teacher, labels, generator=torch.Generator().manual_seed(seed))

    first = draw(0)
    assert first.shape == (BATCH_SIZE, teacher.geometry.num_tokens) and first.dtype == torch.long
    assert 0 <= first.min() and first.max() < teacher.codebook.shape[0]
    assert torch.equal(draw(0), first)


def test_decode_paths_agree_and_the_embedding_path_is_differentiable(teacher):
    tokens = random_tokens(teacher)
    images = teacher.decode_tokens(tokens)
    assert images.dim() == 4 and images.shape[:2] == (BATCH_SIZE, 3)
    assert 0 <= images.min() and images.max() <= 1
    embeddings = teacher.codebook[tokens].detach().clone().requires_grad_(True)
    decoded = teacher.decode_embeddings(embeddings)
    torch.testing.assert_close(decoded, images, atol=DECODE_ATOL, rtol=0)
    decoded.mean().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tokens must be"):
        teacher.decode_tokens(tokens[:, 1:])
    with pytest.raises(ValueError, match="tokens must be"):
        teacher.decode_tokens(tokens.float())
    with pytest.raises(ValueError, match="embeddings must be"):
        teacher.decode_embeddings(embeddings.detach()[:, 1:])
    for dtype in (torch.float64, torch.bfloat16):  # cast to the weights' dtype, not refused
        other = teacher.decode_embeddings(embeddings.detach().to(dtype))
        assert other.dtype == images.dtype
        # bf16 codes are off by up to 2^-8 relative before the decoder
        tolerance = DECODE_ATOL if dtype == torch.float64 else 0.05
        torch.testing.assert_close(other, images, atol=tolerance, rtol=0)


def test_teacher_forcing_matches_the_sessions_first_step(teacher):
    tokens = random_tokens(teacher)
    logits = teacher.logits_teacher_forcing(labels_for(teacher), tokens)
    vocab_size = teacher.codebook.shape[0]
    assert logits.shape == (BATCH_SIZE, teacher.geometry.num_tokens, vocab_size)
    start, end = teacher.geometry.step_ranges[0]
    with teacher.start(labels_for(teacher), UNGUIDED) as session:
        first_step = session.next_log_probs()
    torch.testing.assert_close(
        logits[:, start:end].log_softmax(dim=-1),
        first_step,
        atol=TEACHER_FORCING_ATOL,
        rtol=TEACHER_FORCING_ATOL,
    )


def test_bad_labels_raise_value_errors(teacher):
    tokens = random_tokens(teacher)
    bad = [
        torch.tensor([0, teacher.num_classes + 1]),  # out of range even with the null class
        torch.tensor([-1, 0]),
        torch.tensor([0.0, 1.0]),
        torch.zeros(BATCH_SIZE, 1, dtype=torch.long),
    ]
    for labels in bad:
        with pytest.raises(ValueError, match="labels"):
            teacher.start(labels)
        with pytest.raises(ValueError, match="labels"):
            teacher.logits_teacher_forcing(labels, tokens)
    with pytest.raises(ValueError, match="labels"):  # sampling never takes the null class
        teacher.start(torch.tensor([0, teacher.null_class]))
    labels = labels_for(teacher)  # any integer dtype is read as the class indices it holds
    expected = teacher.logits_teacher_forcing(labels, tokens)
    for dtype in (torch.uint8, torch.int16):
        torch.testing.assert_close(
            teacher.logits_teacher_forcing(labels.to(dtype), tokens), expected, atol=0, rtol=0
        )


def test_fingerprint_is_stable_and_16_hex_chars(teacher):
    fingerprint = teacher.fingerprint()
    assert FINGERPRINT_PATTERN.fullmatch(fingerprint)
    assert teacher.fingerprint() == fingerprint


# ---- Continuous-token teachers (teachers.protocol.ContinuousTeacher): the same contract
# without the codebook and the log-probabilities; the session's deterministic noise -> token
# map stands where the log-probabilities stand above.
from teachers.far.sampling import draw_noise, map_noise  # noqa: E402
from teachers.protocol import (  # noqa: E402
    ContinuousSamplingConfig,
    ContinuousTeacher,
    ContinuousTeacherSession,
)

CONTINUOUS_SPECS = {"tiny-far-digits": lambda: TeacherSpec(tiny="far-digits")}
CONTINUOUS_UNGUIDED = ContinuousSamplingConfig(cfg_scale=1.0, head_steps=2)


@pytest.fixture(scope="module", params=sorted(CONTINUOUS_SPECS))
def continuous_teacher(request) -> ContinuousTeacher:
    return load_teacher(CONTINUOUS_SPECS[request.param]())


def continuous_noise(teacher: ContinuousTeacher, seed: int = 0) -> torch.Tensor:
    return draw_noise(teacher, BATCH_SIZE, torch.Generator().manual_seed(seed))


def test_continuous_teacher_is_a_frozen_module_in_eval_mode(continuous_teacher):
    teacher = continuous_teacher
    assert isinstance(teacher, nn.Module) and isinstance(teacher, ContinuousTeacher)
    assert not isinstance(teacher, Teacher)  # no codebook, no log-probabilities
    assert not any(p.requires_grad for p in teacher.parameters())
    nn.ModuleDict({"teacher": teacher}).train()
    assert not any(module.training for module in teacher.modules())
    assert teacher.null_class == teacher.num_classes and teacher.token_dim > 0
    assert teacher.geometry.num_tokens == sum(teacher.geometry.tokens_per_step)


@pytest.mark.parametrize("sampling", [None, CONTINUOUS_UNGUIDED], ids=["default", "unguided"])
def test_continuous_session_maps_noise_deterministically_step_by_step(continuous_teacher, sampling):
    teacher = continuous_teacher
    labels, noise = labels_for(teacher), continuous_noise(teacher)
    tokens = []
    with teacher.start(labels, sampling) as session:
        assert isinstance(session, ContinuousTeacherSession)
        for step, (start, end) in enumerate(teacher.geometry.step_ranges):
            assert session.step == step
            chosen = session.next_tokens(noise[:, start:end])
            assert chosen.shape == (BATCH_SIZE, end - start, teacher.token_dim)
            assert torch.equal(session.next_tokens(noise[:, start:end]), chosen)  # no state
            session.accept(chosen)
            tokens.append(chosen)
    tokens = torch.cat(tokens, dim=1)
    assert torch.equal(map_noise(teacher, labels, noise, sampling), tokens)
    forced = teacher.map_noise_teacher_forcing(labels, tokens, noise, sampling)
    torch.testing.assert_close(forced, tokens, atol=TEACHER_FORCING_ATOL, rtol=0)
    if sampling is None:
        explicit = map_noise(teacher, labels, noise, teacher.default_sampling())
        assert torch.equal(explicit, tokens)


def test_continuous_decode_paths_agree_and_are_differentiable(continuous_teacher):
    teacher = continuous_teacher
    tokens = continuous_noise(teacher, seed=1)
    images = teacher.decode_tokens(tokens)
    assert images.shape[:2] == (BATCH_SIZE, 3) and 0 <= images.min() and images.max() <= 1
    embeddings = tokens.clone().requires_grad_(True)
    decoded = teacher.decode_embeddings(embeddings)
    torch.testing.assert_close(decoded, images, atol=DECODE_ATOL, rtol=0)
    decoded.mean().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tokens must be|embeddings must be"):
        teacher.decode_tokens(tokens[:, 1:])


def test_continuous_bad_labels_and_tokens_raise_value_errors(continuous_teacher):
    teacher = continuous_teacher
    for labels in (
        torch.tensor([0, teacher.num_classes + 1]),
        torch.tensor([-1, 0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([0, teacher.null_class]),
    ):
        with pytest.raises(ValueError, match="labels"):
            teacher.start(labels)
    c = teacher.token_dim
    with teacher.start(labels_for(teacher)) as session:
        for tokens in (
            torch.zeros(BATCH_SIZE + 1, 1, c),
            torch.zeros(BATCH_SIZE, 1, c + 1),
            torch.zeros(BATCH_SIZE, c),
            torch.zeros(BATCH_SIZE, 1, c, dtype=torch.long),
        ):
            with pytest.raises(ValueError, match="tokens must be"):
                session.accept(tokens)
        assert session.step == 0


def test_continuous_fingerprint_is_stable_and_16_hex_chars(continuous_teacher):
    fingerprint = continuous_teacher.fingerprint()
    assert FINGERPRINT_PATTERN.fullmatch(fingerprint)
    assert continuous_teacher.fingerprint() == fingerprint
