"""DD over the continuous-token FAR teacher (dd/continuous*.py, teachers/far/student.py; #13), on
the shipped ``far-digits``: Eq. 6 at every AR step, ``dd train``'s float pairs and a short real
run whose loss falls, per-sample seeded sampling, Alg. 4 (the teacher regenerating a range from
the sample's own noise), ``dd eval`` / ``dd sample`` over it, checkpoints refusing another
teacher, ``onestep*`` for continuous tokens, and bad inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import dd
from data_gen.generate_command import main as generate_main
from dd.checkpoint import load_student, save_student
from dd.cli import main as dd_main
from dd.continuous import (
    ContinuousDDStudent,
    check_loss_settings,
    student_class,
    trajectory_input,
)
from dd.continuous_distill import ContinuousDistillModule
from dd.continuous_sampling import (
    dd_step,
    independent_token_sampler,
    sample_tokens,
    sample_tokens_interleaved,
    skip_tokens,
)
from dd.data import load_pairs, sampling_from_dict, split_heldout
from dd.distill import OptimSettings, PairDataModule
from dd.losses import LossSettings
from dd.metrics.digits import class_accuracy, feature_distance, frechet_distance
from dd.sampling import draw_noise
from dd.student import DDStudent
from dd.teacher_spec import TeacherSpec
from teachers.data import load_digits_split
from teachers.far import map_noise
from teachers.protocol import ContinuousSamplingConfig, SamplingConfig
from teachers.sampling import map_continuous_noise
from teachers.tiny import load_tiny_teacher

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "generate_tiny_far.yaml"
TEACHER = "far-digits"
TIMESTEPS = (0, 8)
NUM_PAIRS, NUM_HELDOUT, GLOBAL_BATCH, HEAD_STEPS = 72, 8, 8, 2
LOSS = LossSettings("digits", ce_weight=0.0, perceptual_weight=1.0, token_mse_weight=1.0)
CODEBOOK_SAMPLING_REFUSED = (
    "sampling must be a ContinuousSamplingConfig or None, got SamplingConfig("
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher():
    return load_tiny_teacher(TEACHER)


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(0)
    return ContinuousDDStudent(teacher, TIMESTEPS).eval()


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("far_student") / "pairs"
    argv = ["--recipe", str(RECIPE), "--output.folder", str(folder)]
    argv += ["--pairs.num_pairs", str(NUM_PAIRS), "--output.shard_size", "40"]
    argv += ["--sampling.head_steps", str(HEAD_STEPS), "--run.progress_bar", "false"]
    assert generate_main(argv) == 0
    return folder


def test_student_is_built_from_the_teacher_with_an_embedding_head_only(teacher, student):
    backbone = student.backbone
    assert not hasattr(backbone, "output") and backbone.embedding_out.out_features == 8
    torch.testing.assert_close(backbone.input_proj.weight, teacher.model.token_proj.weight)
    torch.testing.assert_close(backbone.pos_emb[:, :16], teacher.model.pos_emb)
    assert backbone.flag_embedding.weight.abs().max() == 0
    assert all(p.requires_grad for p in student.trainable_parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert student_class(teacher) is ContinuousDDStudent
    assert student_class(load_tiny_teacher("llamagen-digits")) is DDStudent


def test_eq6_prefix_is_returned_as_given_at_every_ar_step(student):
    """One sample per boundary 0..16 (every AR step, and the all-data input): positions before
    the boundary are the input itself, bit for bit; the others are predictions; a change of the
    noise at position i moves no output before i (causal)."""
    n = student.geometry.num_tokens
    boundary = torch.arange(n + 1)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(n + 1, n, 8, generator=generator)
    tokens = torch.randn(n + 1, n, 8, generator=generator)
    labels = torch.arange(n + 1) % 10
    inputs = trajectory_input(noise, tokens, boundary)
    with torch.no_grad():
        out = student(labels, inputs, boundary)
    for b in range(n + 1):
        assert torch.equal(out[b, :b], tokens[b, :b]), b
        assert torch.equal(inputs[b, b:], noise[b, b:]), b
        if b < n:
            assert (out[b, b:] - inputs[b, b:]).abs().amax() > 1e-3, b
    moved = noise.clone()
    moved[:, 10] += 1.0
    with torch.no_grad():
        out_moved = student(labels, trajectory_input(moved, tokens, boundary), boundary)
    torch.testing.assert_close(out_moved[:, :10], out[:, :10], atol=1e-6, rtol=0)
    assert (out_moved[:10, 10:] - out[:10, 10:]).abs().amax() > 1e-4
    # Output i has seen input i (position i + 1 of the backbone): where position 10 is
    # predicted (boundary <= 10), moving its noise moves output 10 itself, in every sample.
    assert ((out_moved[:11, 10] - out[:11, 10]).abs().amax(dim=-1) > 1e-4).all()
    # float16 noise (pairs.noise_dtype) does not round the prefix: it was cast to float16
    half = trajectory_input(noise.half(), tokens, boundary)
    assert half.dtype == torch.float32
    for b in range(n + 1):
        assert torch.equal(half[b, :b], tokens[b, :b]), b
        assert torch.equal(half[b, b:], noise.half()[b, b:].float()), b


class LossRecorder(Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step - 1] = float(outputs["loss"])


def test_float_pairs_and_a_short_run_lowers_the_loss(teacher, pair_folder):
    """``load_pairs`` keeps the float tokens (equal to the head's map of the noise); 30 real
    steps (batch 8, lr 1e-3) lower the mean loss of the last 5 steps below 0.8x the first 5."""
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    assert pairs.tokens.dtype == torch.float32 and pairs.tokens.shape == (NUM_PAIRS, 16, 8)
    sampling = ContinuousSamplingConfig(cfg_scale=2.0, head_steps=HEAD_STEPS)
    # Mapped here in a batch of 4, in the run in larger ones: matrix products may sum in
    # another order, float32 round-off the head's steps carry to ~2e-5 on some CPUs.
    torch.testing.assert_close(
        pairs.tokens[:4],
        map_noise(teacher, pairs.labels[:4], pairs.noise[:4], sampling),
        atol=1e-4,
        rtol=0,
    )
    train, heldout = split_heldout(pairs, NUM_HELDOUT)
    torch.manual_seed(0)
    student = ContinuousDDStudent(teacher, TIMESTEPS)
    optim = OptimSettings(lr=1e-3, lr_reference_batch=0)
    module = ContinuousDistillModule(student, feature_distance, optim, LOSS, GLOBAL_BATCH)
    # Its validation logs the perceptual distance whatever its weight: never without one.
    mse_only = dataclasses.replace(LOSS, perceptual_weight=0.0)
    with pytest.raises(ValueError, match="no perceptual distance was given .validation logs it"):
        ContinuousDistillModule(student, None, optim, mse_only, GLOBAL_BATCH)
    data = PairDataModule(
        train, heldout, global_batch_size=GLOBAL_BATCH, num_timesteps=len(TIMESTEPS), seed=0
    )
    recorder = LossRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=30,
        gradient_clip_val=1.0,
        val_check_interval=30,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    losses = recorder.losses
    first = sum(losses[s] for s in range(5)) / 5
    last = sum(losses[s] for s in range(25, 30)) / 5
    assert last < 0.8 * first, (first, last)
    assert "val/token_mse_step8" in trainer.callback_metrics


def test_sampling_does_not_depend_on_the_batch_size(student):
    labels = torch.arange(6) % 10
    whole = dd.sample(student, labels, steps=2, generator=torch.Generator().manual_seed(3))
    part = dd.sample(student, labels[:2], steps=2, generator=torch.Generator().manual_seed(3))
    assert whole.shape == (6, 3, 16, 16) and whole.min() >= 0 and whole.max() <= 1
    torch.testing.assert_close(whole[:2], part, atol=1e-5, rtol=0)
    other = dd.sample(student, labels[:2], steps=2, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other, part)


def test_second_step_keeps_the_first_steps_prefix(student):
    labels = torch.arange(4)
    noise = draw_noise(4, 16, 8, torch.Generator().manual_seed(1))
    one = sample_tokens(student, labels, noise, steps=1)
    two = sample_tokens(student, labels, noise, steps=2)
    assert one.dtype == torch.float32 and one.shape == (4, 16, 8)
    assert torch.equal(one[:, :8], two[:, :8]) and not torch.allclose(one[:, 8:], two[:, 8:])
    # Eq. 5's input by hand: step 1 the noise alone, step 2 step 1's tokens before the
    # boundary and the sample's own noise after it; other noise there gives other tokens.
    with torch.no_grad():
        assert torch.equal(one, student(labels, noise, torch.zeros(4, dtype=torch.long)))
        at_8 = torch.full((4,), 8)
        expected = student(labels, torch.cat([one[:, :8], noise[:, 8:]], dim=1), at_8)
        assert torch.equal(two, expected)
        other = torch.cat([one[:, :8], torch.randn_like(noise[:, 8:])], dim=1)
        assert not torch.allclose(student(labels, other, at_8)[:, 8:], two[:, 8:])


def test_alg4_regenerates_its_range_from_the_samples_own_noise(teacher, student):
    """Alg. 4 over continuous tokens: before ``first`` DD step 1's tokens; on ``[first, second)``
    the teacher's head map of the same noise given the tokens before it (checked against the
    teacher-forcing pass, not the session); from ``second`` DD step 2 of that prefix. With
    ``first = 0`` the prefix is the teacher's own sample of that noise."""
    labels = torch.arange(4)
    noise = draw_noise(4, 16, 8, torch.Generator().manual_seed(5))
    sampling = ContinuousSamplingConfig(cfg_scale=2.0, head_steps=HEAD_STEPS)
    full = sample_tokens_interleaved(student, labels, noise, (0, 8), sampling=sampling)
    own = map_continuous_noise(teacher, labels, noise, sampling)
    torch.testing.assert_close(full[:, :8], own[:, :8], atol=1e-5, rtol=0)
    torch.testing.assert_close(full, dd_step(student, labels, noise, full, 8), atol=0, rtol=0)
    late = sample_tokens_interleaved(student, labels, noise, "pre-trained-5-9", sampling=sampling)
    one_step = sample_tokens(student, labels, noise, steps=1)
    assert torch.equal(late[:, :4], one_step[:, :4])
    forced = teacher.map_noise_teacher_forcing(labels, late, noise, sampling)
    torch.testing.assert_close(late[:, 4:8], forced[:, 4:8], atol=1e-5, rtol=0)
    assert not torch.allclose(late[:, 4:8], one_step[:, 4:8], atol=1e-3)

    # batch-size invariance through the public API
    def seeded():
        return torch.Generator().manual_seed(1)

    whole = dd.sample(student, labels, interleave=(4, 8), generator=seeded())
    part = dd.sample(student, labels[:2], interleave=(4, 8), generator=seeded())
    torch.testing.assert_close(whole[:2], part, atol=1e-5, rtol=0)
    for bad, match in (((0, 16), "outside the sequence"), ((0, 5), "trained timestep"),
                       ((8, 8), "empty range")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            dd.sample(student, labels, interleave=bad)
    with pytest.raises(ValueError, match="leave steps unset"):
        dd.sample(student, labels, steps=1, interleave=(0, 8))
    with pytest.raises(ValueError, match="noise must be"):
        sample_tokens_interleaved(student, labels, noise[:, :8], (0, 8))


def test_skip_n_maps_the_first_steps_then_fills_the_rest_in_one_parallel_pass(teacher):
    """skip-n for continuous tokens: the first ``K - n`` AR steps are exactly the teacher's
    tokens of the same noise (the last of them from the parallel pass, whose inputs before it
    are all real); the later ones are the head map given placeholders, so they differ;
    ``skip_n = 0`` is the teacher's map; out-of-range ``n``, bad noise and a codebook
    ``SamplingConfig`` are refused."""
    labels = torch.arange(4)
    noise = draw_noise(4, 16, 8, torch.Generator().manual_seed(6))
    sampling = ContinuousSamplingConfig(cfg_scale=2.0, head_steps=HEAD_STEPS)
    own = map_continuous_noise(teacher, labels, noise, sampling)
    assert torch.equal(skip_tokens(teacher, labels, noise, 0, sampling), own)
    skipped = skip_tokens(teacher, labels, noise, 6, sampling)
    torch.testing.assert_close(skipped[:, :10], own[:, :10], atol=1e-5, rtol=0)
    assert not torch.allclose(skipped[:, 10:], own[:, 10:], atol=1e-3)
    one_call = skip_tokens(teacher, labels, noise, 15, sampling)
    torch.testing.assert_close(one_call[:, :1], own[:, :1], atol=1e-5, rtol=0)
    for bad in (-1, 16):
        with pytest.raises(ValueError, match="0 to 15 of them can be skipped"):
            skip_tokens(teacher, labels, noise, bad, sampling)
    with pytest.raises(ValueError, match="noise must be"):
        skip_tokens(teacher, labels, noise[:, :8], 2, sampling)
    # A codebook SamplingConfig: one line, whether skip-n opens a session (6) or not (15).
    for skip_n in (0, 6, 15):
        with pytest.raises(ValueError) as error:
            skip_tokens(teacher, labels, noise, skip_n, SamplingConfig())
        assert str(error.value).startswith(CODEBOOK_SAMPLING_REFUSED), skip_n
        assert "\n" not in str(error.value)


def test_dd_eval_and_dd_sample_run_over_a_continuous_teacher(student, pair_folder, tmp_path):
    """``dd eval`` / ``dd sample`` on a FAR student: the pairs' sampling settings, the default
    methods (Alg. 4's far-digits presets, skip-1, onestep* from the pairs' tokens), and a bad
    method refused with exit code 1."""
    folder = save_student(student, tmp_path / "student", TeacherSpec(tiny=TEACHER))
    report_path = tmp_path / "eval.json"
    argv = ["eval", "--student", str(folder), "--pairs", str(pair_folder), "--num_per_class", "2",
            "--batch_size", "8", "--is_splits", "1", "--output", str(report_path),
            "--progress_bar", "false", "--num_threads", "1"]  # fmt: skip
    assert dd_main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["family"] == "far" and report["sampling"]["head_steps"] == HEAD_STEPS
    assert [row["name"] for row in report["rows"]] == [
        "teacher", "dd 1-step", "dd 2-step", "dd+teacher pre-trained-1-9",
        "dd+teacher pre-trained-5-9", "dd+teacher pre-trained-7-9", "skip-1", "onestep*",
    ]  # fmt: skip
    assert [row["steps"] for row in report["rows"]] == [16, 1, 2, 9, 6, 4, 15, 1]
    out = tmp_path / "samples"
    argv = ["sample", "--student", str(folder), "--pairs", str(pair_folder), "--labels", "[3, 7]",
            "--output", str(out)]  # fmt: skip
    assert dd_main(argv) == 0 and (out / "grid.png").is_file()
    assert sorted(p.name for p in (out / "dd_teacher_pre-trained-5-9").iterdir()) == [
        "0000_class3.png", "0001_class7.png"
    ]  # fmt: skip
    again = str(tmp_path / "again")  # out holds the run above: refused for that reason
    assert dd_main([*argv[:-2], "--methods", "['skip:16']", "--output", again]) == 1


def test_pairs_of_another_kind_of_teacher_are_refused_by_fingerprint(pair_folder, capsys):
    """A LlamaGen student given FAR pairs: the fingerprint refusal in one line, not a TypeError
    from reading the FAR folder's sampling settings as a codebook teacher's."""
    for command in ("sample", "eval"):
        argv = [command, "--student", "llamagen-digits", "--pairs", str(pair_folder)]
        capsys.readouterr()
        assert dd_main(argv) == 1
        assert "not of the teacher being distilled" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\['cfg_schedule'\] are not those of a continuous"):
        sampling_from_dict({"cfg_scale": 2.0, "cfg_schedule": "constant"}, continuous=True)


def test_checkpoint_round_trips_and_refuses_another_teacher(student, tmp_path):
    folder = save_student(student, tmp_path / "far", TeacherSpec(tiny=TEACHER))
    loaded = load_student(folder)
    assert isinstance(loaded, ContinuousDDStudent) and loaded.timesteps == TIMESTEPS
    labels = torch.arange(3)
    noise = draw_noise(3, 16, 8, torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        sample_tokens(loaded, labels, noise, steps=2), sample_tokens(student, labels, noise, 2)
    )
    with pytest.raises(ValueError, match="only works with the teacher it was distilled from"):
        load_student(folder, teacher=load_tiny_teacher("far-digits-flow"))


def test_onestep_star_draws_each_position_from_its_class_set():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(30, 5, 3, generator=generator)
    token_labels = torch.arange(30) % 3
    labels = torch.tensor([0, 0, 1, 2, 2, 2] * 20)
    drawn = independent_token_sampler(tokens, token_labels, labels, generator=generator)
    assert drawn.shape == (120, 5, 3)
    for m in range(120):
        pool = tokens[token_labels == labels[m]]  # [10, 5, 3]
        for i in range(5):
            assert (pool[:, i] == drawn[m, i]).all(-1).any(), (m, i)
    # independent across positions: the source rows of one sample are not all the same
    source = [
        [int((tokens[:, i] == drawn[m, i]).all(-1).nonzero()[0]) for i in range(5)]
        for m in range(120)
    ]
    assert sum(len(set(rows)) > 1 for rows in source) > 100
    with pytest.raises(ValueError, match="no tokens of class 5"):
        independent_token_sampler(tokens, token_labels, torch.tensor([5]))


def test_bad_inputs_are_refused(teacher, student):
    with pytest.raises(ValueError, match="split_token must be 0"):
        ContinuousDDStudent(teacher, TIMESTEPS, split_token=4)
    with pytest.raises(ValueError, match="no noise-logit prior"):
        ContinuousDDStudent(teacher, TIMESTEPS, noise_logit_scale=1.0)
    with pytest.raises(ValueError, match="not a continuous-token teacher"):
        ContinuousDDStudent(load_tiny_teacher("llamagen-digits"), TIMESTEPS)
    with pytest.raises(ValueError, match="timestep 16"):
        ContinuousDDStudent(teacher, (0, 16))
    labels, boundary = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"inputs must be float \[2, 16, 8\]"):
        student(labels, torch.zeros(2, 16, 4), boundary)
    with pytest.raises(ValueError, match="inputs must be float"):
        student(labels, torch.zeros(2, 16, 8, dtype=torch.long), boundary)
    with pytest.raises(ValueError, match="boundary must be in"):
        student(labels, torch.zeros(2, 16, 8), torch.tensor([0, 17]))
    with pytest.raises(ValueError, match="class labels"):
        dd.sample(student, labels + 10, steps=1)
    with pytest.raises(ValueError, match="1 to 2 steps"):
        dd.sample(student, labels, steps=3)
    with pytest.raises(ValueError, match="labels is empty"):  # a reshape error before
        dd.sample(student, labels[:0])
    with pytest.raises(ValueError, match=r"far student backbone does not take the options"):
        ContinuousDDStudent(teacher, TIMESTEPS, backbone_options={"teacher_aligned": False})
    with pytest.raises(ValueError, match="noise and tokens must both be"):
        trajectory_input(torch.zeros(2, 16, 8), torch.zeros(2, 16), boundary)
    with pytest.raises(ValueError, match="set loss.ce_weight: 0"):
        check_loss_settings(teacher, LossSettings("digits"))
    with pytest.raises(ValueError, match="token_mse_weight"):
        check_loss_settings(load_tiny_teacher("llamagen-digits"), LOSS)
    nothing = LossSettings("digits", ce_weight=0.0, perceptual_weight=0.0, token_mse_weight=0.0)
    with pytest.raises(ValueError, match="the loss is 0"):  # it trained nothing, silently
        check_loss_settings(teacher, nothing)
    eight_bit = dd.sample(student, labels.to(torch.uint8), generator=torch.Generator())
    assert torch.equal(eight_bit, dd.sample(student, labels, generator=torch.Generator()))
    with pytest.raises(ValueError, match="integer token positions"):  # 0.5 was read as a mask
        student(labels, torch.zeros(2, 16, 8), torch.tensor([0.5, 3.7]))


def test_the_shipped_student_loads_by_name_and_draws_recognisable_digits():
    """``dd.load_student("far-digits")`` (dd/weights/far-digits): 1- and 2-step samples of 20
    per class are recognised by the digits classifier at >= 95% and have FID <= 14 against the
    train split (digits features). Measured at seeds 0-4: accuracy 98-100%, FID 9.4-10.8."""
    student = load_student("far-digits")
    assert isinstance(student, ContinuousDDStudent) and student.teacher.family == "far"
    assert student.timesteps == TIMESTEPS
    labels = torch.arange(10).repeat_interleave(20)
    reference = load_digits_split("train").images_01()
    for steps in (1, 2):
        images = dd.sample(student, labels, steps=steps, generator=torch.Generator().manual_seed(0))
        assert class_accuracy(images, labels) >= 0.95, steps
        assert frechet_distance(images, reference) <= 14.0, steps
