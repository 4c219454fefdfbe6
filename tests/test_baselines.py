"""Baselines (dd/baselines.py) on both tiny teachers: the teacher's sampler, skip-n, onestep*;
batch-size invariance, skip-0 / skip-1 against the teacher, onestep*'s token table from real
pair shards and against the dense frequencies."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from data_gen.config import (
    GenerateRecipe,
    OutputSettings,
    PairSettings,
    RunSettings,
    SamplingOverrides,
)
from data_gen.engine import run_generation
from dd.baselines import (
    ClassTokenTable,
    onestep_tokens,
    skip_tokens,
    teacher_forcing_log_probs,
    teacher_tokens,
    token_table_from_pairs,
)
from dd.data import load_pairs
from dd.sampling import draw_randomness
from dd.teacher_spec import TeacherSpec
from teachers.protocol import SamplingConfig
from teachers.sampling import sample_from_uniforms
from teachers.tiny import load_tiny_teacher, tiny_sampling

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ("llamagen-digits", "var-digits")


@pytest.fixture(scope="module", params=NAMES)
def named_teacher(request):
    return request.param, load_tiny_teacher(request.param)


def uniforms(teacher, count: int, seed: int) -> torch.Tensor:
    n, code_dim = teacher.geometry.num_tokens, teacher.codebook.shape[1]
    return draw_randomness(count, n, code_dim, torch.Generator().manual_seed(seed)).uniforms_BN


def test_teacher_forcing_log_probs_equal_the_session_stepped_through_the_tokens(named_teacher):
    """The one parallel forward (two with CFG) gives every token's guided log p as the KV-cached
    session does when it accepts the same tokens step by step (CFG schedule of the family,
    LlamaGen's cfg_interval, temperature, top-k / top-p), to 1e-4 on the finite entries, with
    the same filtered codes; from a cut, the same rows as from token 0."""
    name, teacher = named_teacher
    labels = torch.arange(6) % teacher.num_classes
    settings = [tiny_sampling(name)]
    if name == "llamagen-digits":  # cfg_interval: guided up to token 11, then conditional only
        settings.append(dataclasses.replace(settings[0], cfg_interval=10))
    for sampling in settings:
        tokens = teacher_tokens(teacher, labels, uniforms(teacher, 6, seed=2), sampling)
        stepped = []
        with teacher.start(labels, sampling) as session:
            for start, end in teacher.geometry.step_ranges:
                stepped.append(session.next_log_probs())
                session.accept(tokens[:, start:end])
        expected = torch.cat(stepped, dim=1)
        parallel = teacher_forcing_log_probs(teacher, labels, tokens, sampling)
        assert parallel.shape == expected.shape == (*tokens.shape, teacher.vocab_size)
        assert torch.equal(torch.isfinite(parallel), torch.isfinite(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(parallel[finite], expected[finite], atol=1e-4, rtol=0)
        # From a cut (skip-n's forward): the same rows, cfg_interval counted from token 0.
        for cut in (teacher.geometry.step_ranges[2][0], teacher.geometry.step_ranges[-2][0]):
            tail = teacher_forcing_log_probs(teacher, labels, tokens, sampling, cut)
            torch.testing.assert_close(tail, parallel[:, cut:])


def test_skip_zero_is_the_teachers_sampler_and_the_first_filled_step_is_exact(named_teacher):
    """skip-0 runs every step through the session: the teacher's sampler, draw for draw. In
    skip-n the one parallel forward sees only real tokens before its first filled step, so
    (guided as the session guides) that step's distribution is the teacher's: the same draws up
    to float differences between the KV-cached and teacher-forcing paths (tolerance 1%)."""
    name, teacher = named_teacher
    labels = torch.arange(8) % teacher.num_classes
    sampling = tiny_sampling(name)
    u = uniforms(teacher, 8, seed=1)
    plain = teacher_tokens(teacher, labels, u, sampling)
    assert torch.equal(skip_tokens(teacher, labels, u, 0, sampling), plain)
    ranges = teacher.geometry.step_ranges
    for skip_n in (1, 2):
        skipped = skip_tokens(teacher, labels, u, skip_n, sampling)
        start, end = ranges[-1 - skip_n]  # the first filled step
        assert torch.equal(skipped[:, :start], plain[:, :start])
        assert (skipped[:, start:end] == plain[:, start:end]).float().mean() >= 0.99
    half = teacher.geometry.num_steps // 2
    skip_more = skip_tokens(teacher, labels, u, half, sampling)
    assert not torch.equal(skip_more, plain)  # conditioned on placeholders: it must differ
    argmax = skip_tokens(teacher, labels, u, 1, sampling, fill="argmax")
    cut = ranges[-2][0]
    assert torch.equal(argmax[:, :cut], plain[:, :cut])


def test_every_baseline_is_batch_size_invariant(named_teacher):
    name, teacher = named_teacher
    labels = torch.arange(6) % teacher.num_classes
    sampling = tiny_sampling(name)
    u_all, u_part = uniforms(teacher, 6, seed=2), uniforms(teacher, 2, seed=2)
    assert torch.equal(u_all[:2], u_part)
    pair_tokens = torch.randint(64, (40, u_all.shape[1]))
    table = ClassTokenTable.of(pair_tokens, torch.arange(40) % 10, 10, 64)
    samplers = {
        "teacher": lambda lab, u: teacher_tokens(teacher, lab, u, sampling),
        "skip": lambda lab, u: skip_tokens(teacher, lab, u, 2, sampling),
        "onestep*": lambda lab, u: onestep_tokens(table, lab, u),
    }
    for method, sampler in samplers.items():
        whole, part = sampler(labels, u_all), sampler(labels[:2], u_part)
        assert torch.equal(whole[:2], part), method


def test_bad_baseline_input_is_refused(named_teacher):
    _, teacher = named_teacher
    labels = torch.zeros(2, dtype=torch.long)
    u = uniforms(teacher, 2, seed=0)
    with pytest.raises(ValueError, match="can be skipped"):
        skip_tokens(teacher, labels, u, teacher.geometry.num_steps)
    with pytest.raises(ValueError, match="class labels"):
        skip_tokens(teacher, labels + teacher.num_classes, u, 1)
    one_each = torch.zeros(10, u.shape[1], dtype=torch.long)
    table = ClassTokenTable.of(one_each, torch.arange(10), 10, 64)
    with pytest.raises(ValueError, match="class labels"):
        onestep_tokens(table, labels - 1, u)
    with pytest.raises(ValueError, match=r"no pairs of classes \[9\]"):
        ClassTokenTable.of(torch.zeros(9, 4, dtype=torch.long), torch.arange(9), 10, 64)


def test_token_table_names_bad_labels_as_bad_labels():
    """A label outside ``[0, num_classes)`` is a bad label, not an absent class (the old
    message listed no absent class: []) and not torch.bincount's RuntimeError (for -1)."""
    tokens = torch.zeros(20, 4, dtype=torch.long)
    every_class = torch.arange(18) % 3
    for bad in (3, -1):
        labels = torch.cat([every_class, torch.tensor([bad, 0])])
        with pytest.raises(ValueError, match=rf"class labels must be in \[0, 3\).*got \[{bad}\]"):
            ClassTokenTable.of(tokens, labels, 3, 64)


REFUSED_SAMPLING = {  # a setting each family's session refuses (its check_sampling)
    "llamagen-digits": (SamplingConfig(cfg_scale=2.0, cfg_schedule="linear"), "constant scale"),
    "var-digits": (SamplingConfig(cfg_scale=2.0, cfg_interval=3.0), "no cfg_interval"),
}


def test_skip_refuses_settings_the_teacher_refuses_before_any_forward(named_teacher):
    """skip-n with every step after the first skipped (n = K - 1) opens no session, whose start
    checks the settings: it must check them itself, as n = K - 2 does, and before any
    forward (the teacher-forcing forward of the last n + 1 steps included)."""
    name, teacher = named_teacher
    bad, message = REFUSED_SAMPLING[name]
    labels, u = torch.arange(2), uniforms(teacher, 2, seed=0)
    tokens = torch.zeros(2, teacher.geometry.num_tokens, dtype=torch.long)
    block = teacher.gpt.layers[0] if name == "llamagen-digits" else teacher.var.blocks[0]
    forwards = []
    hook = block.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        for skip_n in (teacher.geometry.num_steps - 2, teacher.geometry.num_steps - 1):
            with pytest.raises(ValueError, match=message):
                skip_tokens(teacher, labels, u, skip_n, bad)
        with pytest.raises(ValueError, match=message):
            teacher_forcing_log_probs(teacher, labels, tokens, bad)
    finally:
        hook.remove()
    assert forwards == []


def test_token_table_draws_the_inverse_cdf_of_the_dense_frequencies():
    """The sorted-token table draws, for every uniform, the token the inverse CDF of the dense
    per-class, per-position counts gives (the first code whose cumulative count exceeds
    ``u * N_c``, in integers and float64, where the comparison is exact): the same onestep* at
    N * n integers instead of classes * n * V floats. Away from exact ties the float32
    ``sample_from_uniforms`` of the frequencies draws the same; at a tie (``u = 0.5`` where a
    cumulative frequency is exactly 1/2) its rounding decides, and it differed between an AMD
    and an Intel CPU, so the ties are checked against the counts only."""
    generator = torch.Generator().manual_seed(0)
    num_classes, n, vocab = 3, 7, 50
    tokens = torch.randint(vocab, (61, n), generator=generator) // 3  # uneven, some codes unused
    labels = torch.randint(num_classes, (61,), generator=generator)
    labels[:num_classes] = torch.arange(num_classes)
    table = ClassTokenTable.of(tokens, labels, num_classes, vocab)
    assert table.sorted_tokens.dtype == torch.int16 and table.num_classes == num_classes
    dense = torch.zeros(num_classes, n, vocab, dtype=torch.float64)
    dense.index_put_(
        (labels[:, None].expand_as(tokens), torch.arange(n).expand_as(tokens), tokens),
        torch.ones((), dtype=torch.float64), accumulate=True,
    )  # fmt: skip
    counts = dense.clone()  # whole numbers in float64
    dense /= dense.sum(-1, keepdim=True)
    for c in range(num_classes):
        torch.testing.assert_close(table.frequencies(c), dense[c].float())
    draw_labels = torch.arange(600) % num_classes
    u = torch.rand(600, n, generator=generator)
    u[:3] = torch.tensor([0.0, 0.5, 1 - 2**-24])[:, None]  # the ends and a midpoint
    cumulative = counts[draw_labels].cumsum(-1)
    target = u.double()[..., None] * cumulative[..., -1:]
    expected = (cumulative > target).long().argmax(-1)
    drawn = table.draw(draw_labels, u)
    assert torch.equal(drawn, expected)
    assert torch.equal(drawn[3:], sample_from_uniforms(dense[draw_labels].log(), u)[3:])


def test_onestep_frequencies_come_from_real_pair_shards(tmp_path):
    """The token table of a real (small) pair folder, read shard by shard: each class's
    frequencies equal counting the shards' tokens by hand; onestep* draws follow them (never a
    zero-frequency code)."""
    name = "var-digits"
    teacher = load_tiny_teacher(name)
    folder = tmp_path / "pairs"
    recipe = GenerateRecipe(
        teacher=TeacherSpec(tiny=name),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling(name))),
        pairs=PairSettings(num_pairs=20, labels="balanced", seed=0),
        output=OutputSettings(folder=str(folder), shard_size=10),
        run=RunSettings(batch_size=10, accelerator="cpu", devices=1, progress_bar=False),
    )
    assert run_generation(recipe).complete
    table = token_table_from_pairs(folder, teacher)
    pairs = load_pairs(folder, teacher_fingerprint=teacher.fingerprint())
    assert table.sorted_tokens.shape == (20, teacher.geometry.num_tokens)
    for label in range(10):
        same = pairs.tokens[pairs.labels == label]
        expected = torch.stack([torch.bincount(column, minlength=64) for column in same.T])
        torch.testing.assert_close(table.frequencies(label), expected.float() / len(same))
    labels = torch.arange(10).repeat(20)
    drawn = onestep_tokens(table, labels, uniforms(teacher, len(labels), seed=3))
    for label in range(10):  # every drawn token is one the class's pairs hold at that position
        held = table.frequencies(label)
        assert (held[torch.arange(130), drawn[labels == label]] > 0).all()
