"""Few-step sampling (dd/sampling.py, Alg. 3 and 4) on both tiny teachers with untrained students:
shapes and range, per-sample seeding, the prefix kept between steps, bad input."""

import copy

import pytest
import torch

import dd
from dd.interleave import preset_name
from dd.sampling import (
    choose_tokens,
    dd_step,
    draw_noise,
    draw_randomness,
    nearest_codes,
    sample_tokens,
    sample_tokens_interleaved,
)
from dd.student import DDStudent
from dd.trajectory import trajectory_input
from teachers.sampling import sample_from_uniforms
from teachers.sampling import sample_tokens as teacher_sample_tokens
from teachers.tiny import load_tiny_teacher, tiny_sampling

TINY_NAME = {"llamagen": "llamagen-digits", "var": "var-digits"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=("llamagen-digits", "var-digits"))
def student(request):
    teacher = load_tiny_teacher(request.param)
    second = teacher.geometry.num_steps // 2
    torch.manual_seed(0)
    return DDStudent(teacher, (0, second), teacher.geometry.step_ranges[second][0])


def test_images_do_not_depend_on_the_batch_size(student):
    labels = torch.arange(6) % student.num_classes
    whole = dd.sample(student, labels, steps=2, generator=torch.Generator().manual_seed(3))
    part = dd.sample(student, labels[:2], steps=2, generator=torch.Generator().manual_seed(3))
    assert whole.shape[:2] == (6, 3) and whole.min() >= 0 and whole.max() <= 1
    torch.testing.assert_close(whole[:2], part, atol=1e-5, rtol=0)
    other = dd.sample(student, labels[:2], steps=2, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other, part)


def test_second_step_keeps_the_first_steps_prefix(student):
    labels = torch.arange(4) % student.num_classes
    noise = draw_noise(4, student.geometry.num_tokens, student.code_dim, torch.Generator())
    one = sample_tokens(student, labels, noise, steps=1)
    two = sample_tokens(student, labels, noise, steps=2)
    boundary = student.geometry.step_ranges[student.timesteps[1]][0]
    assert torch.equal(one[:, :boundary], two[:, :boundary])
    assert sample_tokens(student, labels, noise, steps=list(student.timesteps)).equal(two)
    assert sample_tokens(student, labels, noise.double(), steps=1).equal(one)  # cast, not refused


def test_each_step_sees_the_kept_prefix_and_the_samples_own_noise(student):
    """Alg. 3 with Eq. 5's input built here by hand: step 1 sees the noise alone; step 2 the
    code vectors of step 1's tokens before its boundary and the sample's own noise after it.
    Other noise after the boundary gives other tokens there (the input matters)."""
    labels = torch.arange(4) % student.num_classes
    n, width = student.geometry.num_tokens, student.code_dim
    noise = draw_noise(4, n, width, torch.Generator().manual_seed(2))
    boundary = student.geometry.step_ranges[student.timesteps[1]][0]
    kappa = student.sampling_noise_logit_scale

    def by_hand(inputs, tokens, at):
        with torch.no_grad():
            logits, embeddings = student(
                labels, inputs, torch.full((4,), at), tokens, noise_logit_scale=kappa
            )
        return choose_tokens(student, logits, embeddings)

    one = sample_tokens(student, labels, noise, steps=1)
    assert torch.equal(one, by_hand(noise, torch.zeros(4, n, dtype=torch.long), 0))
    two = sample_tokens(student, labels, noise, steps=2)
    codes = student.teacher.codebook[one[:, :boundary]]
    expected = by_hand(torch.cat([codes, noise[:, boundary:]], dim=1), one, boundary)
    assert torch.equal(two[:, boundary:], expected[:, boundary:])
    other = torch.cat([codes, torch.randn_like(noise[:, boundary:])], dim=1)
    assert not torch.equal(by_hand(other, one, boundary)[:, boundary:], two[:, boundary:])


@pytest.mark.parametrize("name", ["llamagen-digits", "var-digits"])
def test_a_dd_step_chooses_what_the_full_outputs_choose(name):
    """``dd_step`` runs each head only where it chooses (logits from the boundary to the split,
    embeddings after); its tokens are ``choose_tokens``' of the full outputs, the prefix copied.
    Splits before, at, after the second boundary and at the end; a noise-logit prior and a
    sampling kappa; weights moved off their zero initialisation. Exact: argmax of values
    equal to 1e-5 (tests/test_student.py) gives the same token unless two nearly tie."""
    teacher = load_tiny_teacher(name)
    geometry = teacher.geometry
    n, second = geometry.num_tokens, geometry.num_steps // 2
    labels = torch.arange(6) % teacher.num_classes
    noise = draw_noise(6, n, teacher.code_dim, torch.Generator().manual_seed(5))
    zeros = torch.zeros(6, n, dtype=torch.long)
    for split in (0, geometry.step_ranges[second][0], geometry.step_ranges[second + 1][0], n):
        torch.manual_seed(6)
        student = DDStudent(teacher, (0, second), split, 1.5, sampling_noise_logit_scale=2.0)
        with torch.no_grad():
            for parameter in student.backbone.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        one = dd_step(student, labels, noise, zeros, 0)
        two = dd_step(student, labels, noise, one, second)
        for step, prefix, tokens in ((0, zeros, one), (second, one, two)):
            start = geometry.step_ranges[step][0]
            boundary = torch.full((6,), start)
            inputs = trajectory_input(noise, prefix, teacher.codebook, boundary)
            with torch.no_grad():
                logits, embeddings = student(
                    labels, inputs, boundary, prefix, noise_logit_scale=2.0
                )
            expected = choose_tokens(student, logits, embeddings)
            expected[:, :start] = prefix[:, :start]
            assert torch.equal(tokens, expected), (split, step)


def test_a_dd_step_runs_each_head_only_at_its_tokens(student, monkeypatch):
    """The point of the restriction (LlamaGen-B: 13% of a forward, [B, 257, 16384] logits):
    the backbone is asked for the logits from the boundary to the split and for the
    embeddings after it, in backbone positions (token + 1), at each of Alg. 3's steps."""
    seen = []
    forward = type(student.backbone).forward

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("logits_positions"), kwargs.get("embedding_positions")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(student.backbone), "forward", spy)
    geometry = student.geometry
    n, split = geometry.num_tokens, student.split_token
    labels = torch.arange(3) % student.num_classes
    noise = draw_noise(3, n, student.code_dim, torch.Generator().manual_seed(7))
    sample_tokens(student, labels, noise, steps=2)
    second = geometry.step_ranges[student.timesteps[1]][0]
    assert seen == [
        (range(1, split + 1), range(split + 1, n + 1)),
        (range(second + 1, max(second, split) + 1), range(max(second, split) + 1, n + 1)),
    ]


def test_the_prefix_comes_back_as_given_even_with_coinciding_codes():
    """Eq. 6: positions before the boundary are the given tokens. With two equal codebook
    rows the embedding head's nearest code of a prefix code vector would be the lower index;
    the step copies the prefix's tokens instead."""
    teacher = copy.deepcopy(load_tiny_teacher("llamagen-digits"))
    with torch.no_grad():  # the codebook is the L2-normalised embedding table
        weight = teacher.vq.quantize.embedding.weight
        weight[1] = weight[0]
    assert torch.equal(teacher.codebook[1], teacher.codebook[0])
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, 20), 0)  # every position from the embedding head
    labels = torch.arange(3)
    noise = draw_noise(3, teacher.geometry.num_tokens, student.code_dim, torch.Generator())
    prefix = torch.ones(3, teacher.geometry.num_tokens, dtype=torch.long)  # code 1 everywhere
    tokens = dd_step(student, labels, noise, prefix, 1)  # AR step 1: boundary after token 0
    boundary = teacher.geometry.step_ranges[1][0]
    assert torch.equal(tokens[:, :boundary], prefix[:, :boundary])


def test_bad_steps_and_labels_are_refused(student):
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="1 to 2 steps"):
        dd.sample(student, labels, steps=3)
    with pytest.raises(ValueError, match="trained timesteps"):
        dd.sample(student, labels, steps=[0, student.timesteps[1] + 1])
    with pytest.raises(ValueError, match="trained timesteps"):
        dd.sample(student, labels, steps=[student.timesteps[1]])
    with pytest.raises(ValueError, match="class labels"):
        dd.sample(student, labels + student.num_classes, steps=1)
    # Values Python would coerce: True as 1 step, "12" as AR steps (1, 2), 1.5 as step 1.
    for wrong in (True, "12", 2.0, [0, 1.5], [0, True]):
        with pytest.raises(TypeError, match="steps="):
            dd.sample(student, labels, steps=wrong)
    assert torch.equal(  # labels of any integer dtype are the classes they hold
        dd.sample(student, labels.to(torch.uint8), generator=torch.Generator().manual_seed(5)),
        dd.sample(student, labels, generator=torch.Generator().manual_seed(5)),
    )
    assert torch.equal(  # index-like ints are accepted as the ints they are
        dd.sample(
            student,
            labels,
            steps=[torch.tensor(student.timesteps[0]), student.timesteps[1]],
            generator=torch.Generator().manual_seed(5),
        ),
        dd.sample(student, labels, steps=2, generator=torch.Generator().manual_seed(5)),
    )


def test_interleaved_teacher_regenerates_exactly_its_range(student):
    """Alg. 4: before ``first`` the DD step-1 tokens are kept; on ``[first, second)`` the
    teacher's own draws (with ``first = 0`` exactly the teacher's plain sampler with the same
    uniforms); from ``second`` DD step 2."""
    labels = torch.arange(4) % student.num_classes
    randomness = draw_randomness(
        4, student.geometry.num_tokens, student.code_dim, torch.Generator()
    )
    noise, uniforms = randomness.noise_BNC, randomness.uniforms_BN
    second = student.timesteps[1]
    boundary = student.geometry.step_ranges[second][0]
    teacher = student.teacher
    sampling = tiny_sampling(TINY_NAME[teacher.family])
    full = sample_tokens_interleaved(
        student, labels, noise, (0, second), uniforms_BN=uniforms, sampling=sampling
    )
    plain = teacher_sample_tokens(teacher, labels, sampling, uniforms=uniforms)
    assert torch.equal(full[:, :boundary], plain[:, :boundary])
    one_step = sample_tokens(student, labels, noise, steps=1)
    first = second - 1
    kept = student.geometry.step_ranges[first][0]
    late = sample_tokens_interleaved(
        student, labels, noise, preset_name(first, second), uniforms_BN=uniforms, sampling=sampling
    )
    assert torch.equal(late[:, :kept], one_step[:, :kept])
    assert not torch.equal(late[:, kept:boundary], one_step[:, kept:boundary])


def first_trunk_block(teacher):
    """The teacher's first transformer block: it runs once per trunk forward."""
    return teacher.gpt.layers[0] if teacher.family == "llamagen" else teacher.var.blocks[0]


@pytest.mark.parametrize("name", ("llamagen-digits", "var-digits"))
def test_interleaved_teacher_prefills_the_kept_prefix_in_one_forward(name):
    """Both sessions run accepted steps lazily: Alg. 4 feeds DD's kept prefix without asking
    for its log-probabilities, so the teacher's trunk runs once for the prefix and the first
    regenerated step, then once per further step (``second - first`` passes, the count
    ``interleave_model_calls`` reports, not ``second``), and draws what stepping the session
    through the prefix draws (the two paths differ by float round-off: at least 99% of the
    regenerated tokens equal)."""
    teacher = load_tiny_teacher(name)
    torch.manual_seed(0)
    second = teacher.geometry.num_steps // 2
    student = DDStudent(teacher, (0, second), teacher.geometry.step_ranges[second][0])
    labels = torch.arange(8) % student.num_classes
    randomness = draw_randomness(8, teacher.geometry.num_tokens, student.code_dim, None)
    sampling = tiny_sampling(name)
    first = second // 2
    passes = []
    hook = first_trunk_block(teacher).register_forward_hook(lambda *_: passes.append(1))
    try:
        tokens = sample_tokens_interleaved(
            student, labels, randomness.noise_BNC, (first, second),
            uniforms_BN=randomness.uniforms_BN, sampling=sampling,
        )  # fmt: skip
    finally:
        hook.remove()
    assert first > 0 and len(passes) == second - first
    stepped = sample_tokens(student, labels, randomness.noise_BNC, steps=1)
    with teacher.start(labels, sampling) as session:
        for step in range(second):
            log_probs = session.next_log_probs()
            start, end = teacher.geometry.step_ranges[step]
            if step >= first:
                stepped[:, start:end] = sample_from_uniforms(
                    log_probs, randomness.uniforms_BN[:, start:end]
                )
            session.accept(stepped[:, start:end])
    begin, end = teacher.geometry.step_ranges[first][0], teacher.geometry.step_ranges[second][0]
    assert (tokens[:, begin:end] == stepped[:, begin:end]).float().mean() >= 0.99


def test_interleaving_ranges_outside_the_sequence_or_trained_steps_are_refused(student):
    labels = torch.zeros(2, dtype=torch.long)
    n_steps = student.geometry.num_steps
    second = student.timesteps[1]
    for bad in ((0, n_steps), (-1, second), "pre-trained-0-3"):
        with pytest.raises(ValueError, match="outside the sequence"):
            dd.sample(student, labels, interleave=bad)
    for empty in ((second, second), (0, 0), (second, second - 1), preset_name(second, second)):
        with pytest.raises(ValueError, match=r"is an empty range.*give first < second") as error:
            dd.sample(student, labels, interleave=empty)
        assert "outside the sequence" not in str(error.value)  # it lies inside it
    with pytest.raises(ValueError, match="trained timestep"):
        dd.sample(student, labels, interleave=(0, second + 1))
    with pytest.raises(ValueError, match="pre-trained-n-m"):
        dd.sample(student, labels, interleave="first-half")
    with pytest.raises(ValueError, match="leave steps unset"):
        dd.sample(student, labels, steps=1, interleave=(0, second))
    with pytest.raises(ValueError, match="class labels"):
        dd.sample(student, labels - 1, interleave=(0, second))


def test_interleaved_images_do_not_depend_on_the_batch_size(student):
    labels = torch.arange(5) % student.num_classes
    second = student.timesteps[1]
    for interleave in ((0, second), (second - 1, second)):
        whole = dd.sample(student, labels, interleave=interleave,
                          generator=torch.Generator().manual_seed(7))  # fmt: skip
        part = dd.sample(student, labels[:2], interleave=interleave,
                         generator=torch.Generator().manual_seed(7))  # fmt: skip
        torch.testing.assert_close(whole[:2], part, atol=1e-5, rtol=0)


def test_nearest_codes_are_the_l2_nearest_in_blocks_and_for_no_positions():
    """The blocked search (``(1 << 20) // V`` rows a block: here 349 rows, 3 blocks) picks the
    L2-nearest code of every embedding, as a brute-force distance does; no positions -> [B, 0]."""
    generator = torch.Generator().manual_seed(0)
    codebook_VC = torch.randn(3000, 4, generator=generator)
    embeddings_BNC = torch.randn(5, 180, 4, generator=generator)[:, 20:]  # a sliced view
    expected = torch.cdist(embeddings_BNC, codebook_VC[None]).argmin(-1)
    assert torch.equal(nearest_codes(embeddings_BNC, codebook_VC), expected)
    assert nearest_codes(embeddings_BNC[:, :0], codebook_VC).shape == (5, 0)


def test_nearest_codes_under_bf16_autocast_are_the_float32_ones():
    """``bf16-mixed`` validation runs ``nearest_codes`` under autocast; in bf16 the scores of
    unit-length codes (LlamaGen's 8-dim codebook) are too coarse: 2.6% of these 4,000
    embeddings (codes plus noise 0.1) got another code before the search was kept in float32."""
    generator = torch.Generator().manual_seed(0)
    codebook_VC = torch.nn.functional.normalize(torch.randn(16384, 8, generator=generator), dim=1)
    picked = torch.randint(0, 16384, (4, 1000), generator=generator)
    embeddings_BNC = codebook_VC[picked] + 0.1 * torch.randn(4, 1000, 8, generator=generator)
    expected = nearest_codes(embeddings_BNC, codebook_VC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_codes(embeddings_BNC, codebook_VC), expected)
        half = embeddings_BNC.bfloat16()  # bf16 embeddings: searched in float32 too
        as_float = nearest_codes(half.float(), codebook_VC)
        assert torch.equal(nearest_codes(half, codebook_VC), as_float)


@pytest.mark.parametrize("name", ["llamagen-digits", "var-digits", "far-digits"])
def test_a_whole_model_half_cast_is_refused_in_one_line(name):
    """``student.to(torch.bfloat16)`` failed inside the VAR and FAR students with a dtype
    mismatch of two matrices, and gave bfloat16 images from the LlamaGen one: sampling runs
    float32 weights, half precision is autocast's, and the error says so."""
    student = dd.load_student(name).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"weights are torch.bfloat16 .*torch.autocast"):
        dd.sample(student, torch.arange(2), generator=torch.Generator().manual_seed(0))
