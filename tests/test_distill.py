"""Stage 2 on Lightning (dd/distill.py, dd/data.py) with real pairs of the tiny LlamaGen: the
data order, refusals, a short run whose loss falls, and stop + resume = uninterrupted."""

from __future__ import annotations

import dataclasses
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint

from data_gen.config import (
    GenerateRecipe,
    OutputSettings,
    PairSettings,
    RunSettings,
    SamplingOverrides,
)
from data_gen.engine import run_generation
from data_gen.shards import read_shard
from dd.data import SEED_STRIDE, BatchOrder, PairBatches, load_pairs, pair_sampling, split_heldout
from dd.distill import DistillModule, OptimSettings, PairDataModule
from dd.ema import FrozenSharingEMA
from dd.losses import LossSettings, cached_teacher_log_probs
from dd.metrics.digits import feature_distance
from dd.sampling import dd_step
from dd.student import DDStudent
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.tiny.registry import tiny_sampling
from tests.shard_edit import rewrite_shard

TEACHER = "llamagen-digits"
NUM_PAIRS, NUM_HELDOUT, GLOBAL_BATCH = 80, 16, 8
TIMESTEPS, SPLIT_TOKEN = (0, 20), 20

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(TeacherSpec(tiny=TEACHER))


@pytest.fixture(scope="module")
def pair_folder(teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill") / "pairs"
    recipe = GenerateRecipe(
        teacher=TeacherSpec(tiny=TEACHER),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling(TEACHER))),
        pairs=PairSettings(num_pairs=NUM_PAIRS, seed=0),
        output=OutputSettings(folder=str(folder), shard_size=32),
        run=RunSettings(batch_size=40, accelerator="cpu", devices=1, progress_bar=False),
    )
    assert run_generation(recipe, teacher=teacher).complete
    return folder


def test_pairs_of_another_teacher_are_refused(pair_folder):
    with pytest.raises(ValueError, match="not of the teacher being distilled"):
        load_pairs(pair_folder, teacher_fingerprint="0" * 16)
    with pytest.raises(FileNotFoundError, match="not a finished pair folder"):
        load_pairs(pair_folder.parent, teacher_fingerprint="0" * 16)


def test_split_heldout_keeps_the_heldout_pairs_whatever_num_train(teacher, pair_folder):
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    train_all, heldout_all = split_heldout(pairs, NUM_HELDOUT)
    train_few, heldout_few = split_heldout(pairs, NUM_HELDOUT, num_train=5)
    assert len(train_few) == 5 and len(train_all) == len(pairs) - NUM_HELDOUT
    assert torch.equal(train_few.tokens, train_all.tokens[:5])
    assert torch.equal(heldout_few.tokens, heldout_all.tokens)
    for bad in (0, len(train_all) + 1):
        with pytest.raises(ValueError, match="num_train must be in"):
            split_heldout(pairs, NUM_HELDOUT, num_train=bad)


def test_batch_order_covers_each_epoch_once_and_ranks_partition_it():
    order = BatchOrder(num_samples=20, global_batch_size=6, num_timesteps=2, seed=3)
    assert order.steps_per_epoch == 3
    epoch = torch.cat([order.rows(step) for step in range(3)])
    assert epoch.unique().numel() == 18  # 3 batches of 6 distinct rows, 2 dropped
    assert not torch.equal(order.rows(0), order.rows(3))  # a new permutation per epoch
    assert torch.equal(order.rows(4), BatchOrder(20, 6, 2, 3).rows(4))
    # The definition: the epoch's permutation drawn from (seed, epoch), cut into batches.
    drawn = torch.randperm(20, generator=torch.Generator().manual_seed(3 * SEED_STRIDE + 1))
    assert torch.equal(order.rows(4), drawn[6:12])
    order.rows(4).fill_(0)  # a caller's batch is its own copy of the kept permutation
    assert torch.equal(order.rows(4), drawn[6:12])


def test_ranks_take_disjoint_slices_of_the_global_batch(teacher, pair_folder):
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    order = BatchOrder(len(pairs), GLOBAL_BATCH, len(TIMESTEPS), seed=0)
    whole = next(iter(PairBatches(pairs, order, start_step=5, rank=0, world_size=1)))
    halves = [
        next(iter(PairBatches(pairs, order, start_step=5, rank=r, world_size=2))) for r in (0, 1)
    ]
    for key in ("labels", "tokens", "noise", "timestep_choice"):
        assert torch.equal(torch.cat([h[key] for h in halves]), whole[key])


def test_pairs_load_in_index_order_with_their_stored_noise_dtype(teacher, pair_folder, tmp_path):
    """Each record lands in the row of its index whatever the order of the records; float16
    noise stays float16 in memory (half of float32's) and batches serve it as float32,
    exactly; the training and held-out sets are views of the loaded pairs (dd train keeps one
    copy); a record of another shape, or one that repeats an index, is refused."""
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    records = sorted(
        (r for shard in sorted(pair_folder.glob("shard-*.tar")) for r in read_shard(shard)),
        key=lambda r: r["index"],
    )
    assert torch.equal(pairs.index, torch.arange(NUM_PAIRS))
    assert torch.equal(pairs.noise, torch.stack([r["noise"] for r in records]))
    assert torch.equal(pairs.tokens, torch.stack([r["tokens"].long() for r in records]))
    assert pairs.labels.tolist() == [r["label"] for r in records]
    half = tmp_path / "half"
    recipe = GenerateRecipe(
        teacher=TeacherSpec(tiny=TEACHER),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling(TEACHER))),
        pairs=PairSettings(num_pairs=16, seed=0, noise_dtype="float16"),
        output=OutputSettings(folder=str(half), shard_size=8),
        run=RunSettings(batch_size=16, accelerator="cpu", devices=1, progress_bar=False),
    )
    assert run_generation(recipe, teacher=teacher).complete
    halves = load_pairs(half, teacher_fingerprint=teacher.fingerprint())
    assert halves.noise.dtype == torch.float16
    order = BatchOrder(len(halves), 8, len(TIMESTEPS), seed=0)
    batch = next(iter(PairBatches(halves, order, start_step=0, rank=0, world_size=1)))
    assert batch["noise"].dtype == torch.float32
    assert torch.equal(batch["noise"], halves.noise[order.rows(0)].float())
    double = tmp_path / "double"  # float64 noise is held as float32, what training reads
    recipe = dataclasses.replace(
        recipe,
        pairs=dataclasses.replace(recipe.pairs, num_pairs=8, noise_dtype="float64"),
        output=dataclasses.replace(recipe.output, folder=str(double)),
    )
    assert run_generation(recipe, teacher=teacher).complete
    doubles = load_pairs(double, teacher_fingerprint=teacher.fingerprint())
    stored = [r["noise"] for r in read_shard(double / "shard-000000.tar")]
    assert stored[0].dtype == torch.float64 and doubles.noise.dtype == torch.float32
    assert torch.equal(doubles.noise, torch.stack(stored).float())
    # the held-out split and the training set are views of the loaded pairs, not copies
    train, heldout = split_heldout(halves, 4)
    for part in (train, heldout):
        assert part.noise.untyped_storage().data_ptr() == halves.noise.untyped_storage().data_ptr()
    assert torch.equal(heldout.noise, halves.noise[12:]) and len(train) == 12
    # validation reads the held-out rows one by one as float32: no float32 copy of them all
    data = PairDataModule(
        train, heldout, global_batch_size=4, num_timesteps=len(TIMESTEPS), seed=0,
        heldout_batch_size=3,
    )  # fmt: skip
    loader = data.val_dataloader()
    assert loader.dataset.pairs is heldout
    batches = list(loader)
    assert [len(batch["labels"]) for batch in batches] == [3, 1]
    assert torch.equal(torch.cat([batch["noise"] for batch in batches]), heldout.noise.float())
    assert torch.equal(torch.cat([batch["tokens"] for batch in batches]), heldout.tokens)
    shard = list(read_shard(half / "shard-000001.tar"))
    rewrite_shard(half, 1, shard[::-1])  # records out of index order within a shard
    assert torch.equal(
        load_pairs(half, teacher_fingerprint=teacher.fingerprint()).noise, halves.noise
    )
    shard[1]["noise"] = shard[1]["noise"][:1]  # record 9's noise [1, C]: refused, not broadcast
    rewrite_shard(half, 1, shard)
    with pytest.raises(ValueError, match=r"record 9's noise is torch.float16 \(1, 8\)"):
        load_pairs(half, teacher_fingerprint=teacher.fingerprint())
    shard[1]["noise"] = halves.noise[9].clone()
    shard[0]["index"] = 0  # record 8 now repeats record 0's index
    rewrite_shard(half, 1, shard)
    with pytest.raises(ValueError, match="record index 0 is out of 0..15 or repeated"):
        load_pairs(half, teacher_fingerprint=teacher.fingerprint())


def test_cached_targets_travel_with_their_pairs(teacher, pair_folder):
    """Row ``i`` of the cached teacher-KL targets is served with pair ``i``, on every rank and
    after a resume (targets marked with their row index); a cache of another size is refused."""
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    order = BatchOrder(len(pairs), GLOBAL_BATCH, len(TIMESTEPS), seed=0)
    marked = torch.arange(len(pairs)).float().view(-1, 1, 1).expand(-1, 2, 3).contiguous()
    for rank in (0, 1):
        batches = iter(
            PairBatches(
                pairs, order, start_step=7, rank=rank, world_size=2, teacher_log_probs=marked
            )
        )
        for _ in range(12):  # into the second epoch
            batch = next(batches)
            rows = batch["teacher_log_probs"][:, 0, 0].long()
            assert torch.equal(pairs.tokens[rows], batch["tokens"])
            assert torch.equal(pairs.noise[rows], batch["noise"])
    with pytest.raises(ValueError, match="79 cached teacher-KL targets for 80 pairs"):
        PairBatches(pairs, order, start_step=0, rank=0, world_size=1, teacher_log_probs=marked[1:])


class LossRecorder(Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}
        self.terms: dict[int, tuple[float, float]] = {}
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step - 1] = float(outputs["loss"])
        self.terms[trainer.global_step - 1] = (
            float(outputs["cross_entropy"]),
            float(outputs["perceptual"]),
        )


CONSTANT = OptimSettings(lr=1e-3, lr_reference_batch=0)
DIGITS_LOSS = LossSettings("digits")
COSINE = OptimSettings(lr=1e-3, lr_reference_batch=0, schedule="cosine", warmup_steps=3)


def fit(
    teacher,
    pair_folder,
    root,
    max_steps,
    *,
    resume_from=None,
    callbacks=(),
    optim=CONSTANT,
    loss=DIGITS_LOSS,
):
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    train, heldout = split_heldout(pairs, NUM_HELDOUT)
    torch.manual_seed(0)  # the new layers' initialisation
    kl = loss.teacher_kl_weight > 0
    student = DDStudent(teacher, TIMESTEPS, SPLIT_TOKEN, noise_logit_scale=2.5 if kl else None)
    sampling = pair_sampling(pair_folder) if kl else None
    module = DistillModule(student, feature_distance, optim, loss, GLOBAL_BATCH, sampling)
    targets = None
    if loss.cache_teacher_kl_targets:
        targets = cached_teacher_log_probs(teacher, train.labels, train.tokens, sampling)
    data = PairDataModule(
        train,
        heldout,
        global_batch_size=GLOBAL_BATCH,
        num_timesteps=len(TIMESTEPS),
        seed=0,
        teacher_log_probs=targets,
    )
    recorder = LossRecorder()
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        gradient_clip_val=1.0,
        val_check_interval=10,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[recorder, *callbacks],
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    return recorder, trainer


def test_the_ema_of_dd_train_leaves_integer_buffers_exact(teacher, pair_folder, tmp_path):
    """``dd train``'s Trainer averages parameters only. Averaging buffers too rounded integer
    ones down (``decay * b + (1 - decay) * b`` copied back into int64): at decay 0.9999 the
    AR-step boundary 22 became 21 in validation and in the module after ``fit``."""
    from dd.train_command import make_trainer
    from dd.train_recipe import RunSection

    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    train, heldout = split_heldout(pairs, NUM_HELDOUT)
    torch.manual_seed(0)
    module = DistillModule(
        DDStudent(teacher, (0, 22), 64), feature_distance, CONSTANT, DIGITS_LOSS, GLOBAL_BATCH
    )
    seen = []

    class Boundaries(Callback):
        def on_validation_batch_start(self, trainer, pl_module, *args):
            seen.append(pl_module.boundaries.tolist())

    run = RunSection(
        global_batch_size=GLOBAL_BATCH, max_steps=3, ema_decay=0.9999, accelerator="cpu",
        val_every_steps=2, checkpoint_every_steps=100, progress_bar=False,
    )  # fmt: skip
    trainer = make_trainer(run, tmp_path)
    trainer.callbacks.append(Boundaries())
    data = PairDataModule(train, heldout, global_batch_size=GLOBAL_BATCH, num_timesteps=2, seed=0)
    trainer.fit(module, datamodule=data)
    assert seen and all(boundaries == [0, 22] for boundaries in seen)
    assert module.boundaries.tolist() == [0, 22]


def test_a_short_run_lowers_the_loss_and_logs_token_agreement(teacher, pair_folder, tmp_path):
    """30 steps (about 4 epochs of 64 pairs, batch 8, EMA on): the mean of the last 5 steps is
    below the first 5 for the total by 20% and for each term (measured here: total 3.74 -> 2.72)."""
    recorder, trainer = fit(
        teacher, pair_folder, tmp_path, 30, callbacks=[FrozenSharingEMA(decay=0.9)]
    )

    def mean(values):
        return sum(values) / len(values)

    first, last = range(5), range(25, 30)
    losses, terms = recorder.losses, recorder.terms
    assert mean([losses[s] for s in last]) < 0.8 * mean([losses[s] for s in first])
    for term in (0, 1):
        assert mean([terms[s][term] for s in last]) < mean([terms[s][term] for s in first]), term
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/token_agreement_step0"]) <= 1
    assert "val/token_agreement_step20" in metrics


def test_each_sample_is_predicted_at_its_own_timestep_and_agreement_is_measured(
    teacher, pair_folder
):
    """Eq. 7 draws a timestep per sample: sample ``i`` of a batch is predicted from its own
    timestep's input (built here by hand, one sample at a time). Validation's token agreement
    is the fraction of held-out tokens from the boundary on that the DD step with the
    teacher's prefix (``dd.sampling.dd_step``) gets right."""
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    train, heldout = split_heldout(pairs, NUM_HELDOUT)
    torch.manual_seed(0)
    student = DDStudent(teacher, TIMESTEPS, SPLIT_TOKEN)
    module = DistillModule(student, feature_distance, CONSTANT, DIGITS_LOSS, GLOBAL_BATCH).eval()
    rows = slice(0, 3)
    labels, noise, tokens = train.labels[rows], train.noise[rows], train.tokens[rows]
    batch = {"labels": labels, "noise": noise, "tokens": tokens}
    with torch.no_grad():
        logits, embeddings, boundary, _ = module._predict(
            {**batch, "timestep_choice": torch.tensor([1, 0, 1])}
        )
        second = teacher.geometry.step_ranges[TIMESTEPS[1]][0]
        assert boundary.tolist() == [second, 0, second]
        for i, at in enumerate(boundary.tolist()):
            one = slice(i, i + 1)
            inputs = torch.cat([teacher.codebook[tokens[one, :at]], noise[one, at:]], dim=1)
            alone = student(labels[one], inputs, torch.tensor([at]), tokens[one])
            torch.testing.assert_close(logits[one], alone[0], atol=1e-4, rtol=0)
            torch.testing.assert_close(embeddings[one], alone[1], atol=1e-4, rtol=0)

    logged = {}
    module.log = lambda name, value, **options: logged.__setitem__(name, float(value))
    held = {"labels": heldout.labels, "noise": heldout.noise, "tokens": heldout.tokens}
    with torch.no_grad():
        module.validation_step(held, 0)
        for step in TIMESTEPS:
            predicted = dd_step(student, heldout.labels, heldout.noise, heldout.tokens, step)
            at = teacher.geometry.step_ranges[step][0]
            right = float((predicted[:, at:] == heldout.tokens[:, at:]).float().mean())
            assert right < 0.9  # an untrained student: the measure is not trivially 1
            assert logged[f"val/token_agreement_step{step}"] == pytest.approx(right, abs=1e-6)


@pytest.mark.parametrize("optim", [CONSTANT, COSINE], ids=["constant", "cosine"])
def test_stop_and_resume_reproduces_the_loss_curve(teacher, pair_folder, tmp_path, optim):
    """Steps 10-19 after resuming from the step-10 checkpoint equal an uninterrupted run's
    (same data order, optimiser and LR-schedule state and weights; float32, 1e-5)."""
    straight = fit(teacher, pair_folder, tmp_path / "straight", 20, optim=optim)[0]
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1)
    fit(teacher, pair_folder, tmp_path / "first", 20, callbacks=[saver], optim=optim)
    checkpoint = next((tmp_path / "ckpt").glob("*step=10*.ckpt"))
    resumed = fit(
        teacher, pair_folder, tmp_path / "second", 20, resume_from=checkpoint, optim=optim
    )[0]
    assert sorted(resumed.losses) == list(range(10, 20))
    for step in range(10, 20):
        expected = straight.losses[step]
        assert abs(resumed.losses[step] - expected) <= 1e-5 * max(1.0, abs(expected)), step
        assert resumed.lrs[step] == pytest.approx(straight.lrs[step], rel=1e-12), step


def test_cached_teacher_kl_targets_train_as_the_per_step_ones(teacher, pair_folder, tmp_path):
    """``loss.cache_teacher_kl_targets``: the targets computed once (batches of 256) give the
    loss curve of the targets computed each step (batches of 8), to float round-off (1e-4 over
    12 steps); the cache is refused without the term, and a batch without its targets raises."""
    with_kl = LossSettings("digits", teacher_kl_weight=1.0)
    cached = dataclasses.replace(with_kl, cache_teacher_kl_targets=True)
    per_step = fit(teacher, pair_folder, tmp_path / "per_step", 12, loss=with_kl)[0].losses
    from_cache = fit(teacher, pair_folder, tmp_path / "cached", 12, loss=cached)[0].losses
    assert sorted(from_cache) == list(range(12))
    for step, expected in per_step.items():
        assert from_cache[step] == pytest.approx(expected, rel=1e-4), step
    student = DDStudent(teacher, TIMESTEPS, SPLIT_TOKEN, noise_logit_scale=2.5)
    no_term = dataclasses.replace(cached, teacher_kl_weight=0.0)
    with pytest.raises(ValueError, match="teacher_kl_weight is 0"):
        DistillModule(student, feature_distance, CONSTANT, no_term, GLOBAL_BATCH)
    module = DistillModule(
        student, feature_distance, CONSTANT, cached, GLOBAL_BATCH, pair_sampling(pair_folder)
    )
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    order = BatchOrder(len(pairs), GLOBAL_BATCH, len(TIMESTEPS), seed=0)
    batch = next(iter(PairBatches(pairs, order, start_step=0, rank=0, world_size=1)))
    with pytest.raises(KeyError, match="teacher_log_probs"):
        module.training_step(batch, 0)


def test_the_cosine_schedule_warms_up_then_decays_to_zero_at_max_steps(
    teacher, pair_folder, tmp_path
):
    """The rate each optimiser step uses, read from the optimiser: warm-up 1/3, 2/3, 3/3 of
    1e-3, then half a cosine that reaches 0 at step 20 (exact to 1e-12)."""
    lrs = fit(teacher, pair_folder, tmp_path, 20, optim=COSINE)[0].lrs
    assert [lrs[s] for s in range(3)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3], rel=1e-12)
    for step in range(3, 20):
        progress = (step - 3) / 17
        expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lrs[step] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
    assert all(lrs[s] > lrs[s + 1] for s in range(3, 19))
    constant = fit(teacher, pair_folder, tmp_path / "c", 5)[0].lrs
    assert set(constant.values()) == {1e-3}


def test_bad_schedules_are_refused(teacher):
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        OptimSettings(warmup_steps=-1)
    module = DistillModule(
        DDStudent(teacher, TIMESTEPS, SPLIT_TOKEN),
        feature_distance,
        OptimSettings(schedule="cosine", warmup_steps=50),
        LossSettings("digits"),
        GLOBAL_BATCH,
    )
    module.trainer = pl.Trainer(max_steps=50, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="must be above optim.warmup_steps: got 50 and 50"):
        module.configure_optimizers()


def test_dd_train_ema_shares_the_frozen_teacher_and_leaves_it_exact(pair_folder, tmp_path):
    """``dd train``'s EMA (``dd.ema.FrozenSharingEMA``) against Lightning's
    ``EMAWeightAveraging`` on the same 4 steps (decay 0.9, validation after step 2): the same
    averaged student to the bit; the teacher bit-identical after ``fit`` (Lightning's copied its
    round-off-"averaged" teacher back: elements changed); the averaged copy's teacher tensors
    are the live ones, its student tensors its own. A fresh teacher: repeated round-off
    averaging reaches a fixed point, so one "averaged" by an earlier run may not move."""
    from dd.train_command import make_trainer
    from dd.train_recipe import RunSection

    teacher = load_teacher(TeacherSpec(tiny=TEACHER))
    pairs = load_pairs(pair_folder, teacher_fingerprint=teacher.fingerprint())
    train, heldout = split_heldout(pairs, NUM_HELDOUT)
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    run = RunSection(
        global_batch_size=GLOBAL_BATCH, max_steps=4, ema_decay=0.9, accelerator="cpu",
        val_every_steps=2, checkpoint_every_steps=100, progress_bar=False,
    )  # fmt: skip

    def fit_with(lightning_ema: bool, root):
        teacher.load_state_dict(before)
        torch.manual_seed(0)
        student = DDStudent(teacher, TIMESTEPS, SPLIT_TOKEN)
        module = DistillModule(student, feature_distance, CONSTANT, DIGITS_LOSS, GLOBAL_BATCH)
        trainer = make_trainer(run, root)
        if lightning_ema:
            index = next(
                i for i, c in enumerate(trainer.callbacks) if isinstance(c, FrozenSharingEMA)
            )
            trainer.callbacks[index] = EMAWeightAveraging(decay=0.9, use_buffers=False)
        data = PairDataModule(
            train, heldout, global_batch_size=GLOBAL_BATCH, num_timesteps=2, seed=0
        )
        trainer.fit(module, datamodule=data)
        ema = next(
            c for c in trainer.callbacks if isinstance(c, FrozenSharingEMA | EMAWeightAveraging)
        )
        changed = sum(int((before[k] != v).sum()) for k, v in teacher.state_dict().items())
        return student.student_state_dict(), changed, module, ema._average_model.module

    theirs, their_changes, _, _ = fit_with(True, tmp_path / "lightning")
    ours, our_changes, module, averaged = fit_with(False, tmp_path / "ours")
    assert their_changes > 0  # what the shared, untouched teacher fixes
    assert our_changes == 0
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    live, copied = dict(module.named_parameters()), dict(averaged.named_parameters())
    for name, parameter in copied.items():
        shared = parameter.data_ptr() == live[name].data_ptr()
        assert shared == name.startswith("student.teacher."), name


def test_the_ema_copy_shares_every_frozen_tensor_and_refuses_one_unfrozen_later():
    """A frozen parameter beside trainable ones, a frozen submodule and its buffer, a frozen
    tensor tied into a trainable module: all shared by the averaged copy (and left exact by the
    averaging); trainable ones copied. Unfreezing a shared parameter during fit is refused (it
    would never be averaged). ``dd train`` refuses FSDP, which would replace shared parameters."""
    from dd.ema import FrozenSharingEMA, copy_sharing_frozen
    from dd.train_recipe import RunSection

    class Toy(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(3, 3)
            self.scale = torch.nn.Parameter(torch.randn(3), requires_grad=False)
            self.frozen = torch.nn.BatchNorm1d(3).requires_grad_(False)
            self.tied = torch.nn.Linear(3, 3)
            self.tied.weight = self.frozen.weight  # a frozen tensor inside a trainable module

    torch.manual_seed(0)
    toy = Toy()
    copied = copy_sharing_frozen(toy)
    live, mine = dict(toy.named_parameters()), dict(copied.named_parameters())
    assert mine.keys() == live.keys()
    for name in live:
        assert (mine[name] is live[name]) == (not live[name].requires_grad), name
    assert copied.frozen.running_mean is toy.frozen.running_mean
    assert copied.tied.weight is copied.frozen.weight

    ema = FrozenSharingEMA(decay=0.9)
    ema.setup(None, toy, "fit")
    before = toy.scale.detach().clone()
    for _ in range(3):
        ema._average_model.update_parameters(toy)
    assert torch.equal(toy.scale, before)  # 0.9 * w + 0.1 * w rounds: the shared one is skipped
    toy.scale.requires_grad_(True)
    with pytest.raises(RuntimeError, match="were frozen when fit began"):
        ema.on_train_batch_end(None, toy, None, None, 0)
    with pytest.raises(ValueError, match="fsdp is not supported"):
        RunSection(strategy="fsdp")
