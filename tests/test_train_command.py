"""``dd train`` (dd/train_command.py): every shipped distillation recipe parses, overrides and
refusals, and a real end-to-end run whose student ``dd.load_student`` reads back."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dd
from data_gen.config import (
    GenerateRecipe,
    OutputSettings,
    PairSettings,
    RunSettings,
    SamplingOverrides,
)
from data_gen.engine import run_generation
from data_gen.shards import FolderLock, read_shard
from dd.checkpoint import initialise_from, read_card, save_student
from dd.cli import main as dd_main
from dd.config import dump_yaml, read_recipe
from dd.config import parse_recipe as parse_any_recipe
from dd.data import pair_identity, pair_sampling
from dd.distill import FROZEN_PREFIXES
from dd.mapped_pairs import identity_key
from dd.student import DDStudent
from dd.teacher_spec import TeacherSpec
from dd.train_command import check_resumable, ema_state_dict, initial_weights
from dd.train_recipe import TrainRecipe
from teachers.tiny import load_tiny_teacher
from teachers.tiny.registry import tiny_sampling
from tests.shard_edit import rewrite_shard

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("distill_*.yaml"))
PAPER = {
    "distill_var_d16": ((0, 5), 55),
    "distill_var_d20": ((0, 4), 30),
    "distill_var_d24": ((0, 4), 30),
    "distill_llamagen_b": ((0, 80), 80),
    "distill_llamagen_l": ((0, 80), 130),
}

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_VAR = TeacherSpec(tiny="var-digits")
DDP_TIMEOUT_S = 600

pytestmark = pytest.mark.usefixtures("one_thread")


def parse_recipe(argv):
    return parse_any_recipe(TrainRecipe, argv, prog="dd train")


def test_the_paper_and_tiny_recipes_are_shipped():
    names = {path.stem for path in RECIPES}
    assert set(PAPER) | {"distill_tiny_llamagen", "distill_tiny_var"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_parses(path):
    recipe, resolved = parse_recipe(["--recipe", str(path)])
    assert recipe.student.timesteps[0] == 0 and "teacher:" in resolved
    if path.stem in PAPER:
        timesteps, split = PAPER[path.stem]
        assert (recipe.student.timesteps, recipe.student.split_token) == (timesteps, split)
        assert recipe.loss.perceptual == "lpips_vgg" and recipe.run.ema_decay == 0.9999
        assert (recipe.loss.ce_weight, recipe.loss.perceptual_weight) == (0.1, 1.0)
        # the paper's student: LlamaGen's logits at the token's own position (not the default)
        paper_readout = {"teacher_aligned": False} if "llamagen" in path.stem else {}
        assert recipe.student.backbone_options == paper_readout


def test_overrides_apply_and_unknown_keys_are_refused(tmp_path, capsys):
    path = RECIPES[0]
    recipe, _ = parse_recipe(["--recipe", str(path), "--optim.lr", "3e-4"])
    assert recipe.optim.lr == 3e-4
    with pytest.raises(SystemExit):
        parse_recipe(["--recipe", str(path), "--optim.lrr", "1"])
    assert "lrr" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  tiny: llamagen-digits\nrun:\n  max_step: 3\n")
    with pytest.raises(SystemExit):
        parse_recipe(["--recipe", str(bad)])
    assert "max_step" in capsys.readouterr().err
    # A prefix of a key is a typo, not that key (argparse would expand it: run.max_step -> 7)
    with pytest.raises(SystemExit):
        parse_recipe(["--recipe", str(path), "--run.max_step", "7"])
    assert "unrecognized arguments: --run.max_step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dd_main(["demo", "--out", str(tmp_path / "demo"), "--quick"])
    assert "unrecognized arguments: --out" in capsys.readouterr().err
    for override, message in (
        (["--run.global_batch_size", "0"], "run.global_batch_size must be >= 1"),
        (["--run.val_every_steps", "0"], "run.val_every_steps must be >= 1"),
        (["--run.gradient_clip_norm", "-1"], "run.gradient_clip_norm must be >= 0"),
        (["--run.devices", "0"], "run.devices must be >= 1, or -1"),
        (["--run.ema_decay", "1"], "run.ema_decay must be in [0, 1)"),
        (["--loss.ce_weight", "-1"], "loss.ce_weight must be >= 0"),
        (["--run.num_threads", "0"], "run.num_threads must be >= 1 or null"),
        (["--optim.lr", "0"], "optim.lr must be > 0, got 0.0"),
        (["--optim.weight_decay", "-0.1"], "optim.weight_decay (-0.1) must be >= 0"),
        (
            ["--optim.schedule", "cosine", "--optim.warmup_steps", "100000000"],
            "must be above optim.warmup_steps",
        ),
    ):
        with pytest.raises(SystemExit):
            parse_recipe(["--recipe", str(path), *override])
        assert message in capsys.readouterr().err, override


def test_print_config_is_the_dry_run(capsys):
    with pytest.raises(SystemExit) as info:
        dd_main(["train", "--recipe", str(RECIPES[0]), "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "teacher:" in printed and "global_batch_size:" in printed
    # The dry run checks what the run would: a bad value is refused, not printed.
    with pytest.raises(SystemExit) as info:
        dd_main(["train", "--recipe", str(RECIPES[0]), "--run.ema_decay", "1.5", "--print_config"])
    assert info.value.code != 0
    refused = capsys.readouterr()
    assert "run.ema_decay must be in [0, 1)" in refused.err and "ema_decay:" not in refused.out


def generate_recipe(folder: Path, seed: int) -> GenerateRecipe:
    return GenerateRecipe(
        teacher=TeacherSpec(tiny="var-digits"),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling("var-digits"))),
        pairs=PairSettings(num_pairs=48, seed=seed),
        output=OutputSettings(folder=str(folder), shard_size=24),
        run=RunSettings(batch_size=24, accelerator="cpu", devices=1, progress_bar=False),
    )


@pytest.fixture(scope="module")
def var_pairs(tmp_path_factory) -> Path:
    pairs = tmp_path_factory.mktemp("train") / "pairs"
    assert run_generation(generate_recipe(pairs, seed=0)).complete
    return pairs


def train_argv(pairs: Path, output: Path, max_steps: int) -> list[str]:
    return [
        "--recipe", str(RECIPES[0].parent / "distill_tiny_var.yaml"),
        "--pairs.folder", str(pairs), "--pairs.num_heldout", "8",
        "--run.output", str(output), "--run.global_batch_size", "8",
        "--run.max_steps", str(max_steps), "--run.val_every_steps", "2",
        "--run.checkpoint_every_steps", "2", "--run.progress_bar", "false",
        "--run.num_threads", "1",
    ]  # fmt: skip


def test_dd_train_runs_end_to_end_and_resumes(var_pairs, tmp_path, capsys, caplog):
    output = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert dd_main(["train", *train_argv(var_pairs, output, 4)]) == 0
    assert (output / "recipe.yaml").is_file() and (output / "checkpoints" / "last.ckpt").is_file()
    # Lightning's lines about devices stay, its cloud-logger advert does not; a run shorter
    # than 50 steps logs its training terms too (it left them out).
    assert "GPU available" in caplog.text and "litlogger" not in caplog.text
    header = (output / "lightning_logs" / "version_0" / "metrics.csv").read_text().split("\n")[0]
    assert "train/loss" in header.split(",")
    student = dd.load_student(output / "student")
    assert student.timesteps == (0, 3)
    recorded = read_card(output / "student")["teacher_sampling"]  # the pairs' teacher settings
    assert recorded == dataclasses.asdict(pair_sampling(var_pairs)) != {}
    assert student.teacher_sampling == pair_sampling(var_pairs)
    images = dd.sample(student, torch.arange(2), steps=2, generator=torch.Generator())
    assert images.shape == (2, 3, 16, 16)
    [first] = read_card(output / "student")["record"]["segments"]
    assert first["steps"] == [0, 4] and first["devices"] == "1 x cpu" and first["fit_seconds"] > 0
    # The same command with a larger budget resumes from last.ckpt at step 4, here with the
    # same pairs memory-mapped: where the pairs are held may change, not which.
    mapped = ["--pairs.memory_map", str(tmp_path / "mapped")]
    assert (
        dd_main(["train", *train_argv(var_pairs, output, 4), "--run.max_steps", "6", *mapped]) == 0
    )
    card = (output / "student" / "student.json").read_text()
    assert '"steps": 6' in card
    # The card keeps the first fit's segment (read from the card it wrote) beside the resumed
    # one's, and their total time (each rounded to 0.1 s).
    record = read_card(output / "student")["record"]
    assert record["segments"][0] == first and record["segments"][1]["steps"] == [4, 6]
    total = first["fit_seconds"] + record["segments"][1]["fit_seconds"]
    assert record["fit_seconds"] == pytest.approx(total, abs=0.051)
    # The written student is the EMA weights (the checkpoint's state_dict), and rerunning a
    # finished run changes nothing (a no-step fit used to leave the current weights there).
    weights = output / "student" / "student.safetensors"
    before = weights.read_bytes()
    ema = ema_state_dict(output / "checkpoints" / "last.ckpt")
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state"):  # nor the teacher, nor the perceptual net
        names = list(checkpoint[key])
        assert names and not any(name.startswith(FROZEN_PREFIXES) for name in names)
    for name, tensor in dd.load_student(output / "student").backbone.state_dict().items():
        torch.testing.assert_close(tensor, ema[f"student.backbone.{name}"], atol=0, rtol=0)
    assert dd_main(["train", *train_argv(var_pairs, output, 4), "--run.max_steps", "6"]) == 0
    assert weights.read_bytes() == before
    # Resuming under another recipe is refused, naming what changed; nothing is overwritten.
    saved = (output / "recipe.yaml").read_text()
    capsys.readouterr()
    code = dd_main(
        ["train", *train_argv(var_pairs, output, 6), "--optim.lr", "5e-4", "--run.seed", "1"]
    )
    assert code == 1  # one line on stderr, as dd generate / eval / sample report
    assert "optim.lr: 0.001 -> 0.0005; run.seed: 0 -> 1" in capsys.readouterr().err
    assert (output / "recipe.yaml").read_text() == saved


def test_a_run_resumes_only_on_the_pairs_it_started_with(var_pairs, tmp_path, capsys):
    """The same pairs.folder path regenerated with another seed between two runs of one
    output: resuming would split and order other pairs, so it is refused, naming both."""
    pairs = tmp_path / "pairs"
    shutil.copytree(var_pairs, pairs)
    output = tmp_path / "run"
    assert dd_main(["train", *train_argv(pairs, output, 2)]) == 0
    shutil.rmtree(pairs)
    recipe = generate_recipe(pairs, seed=1)
    assert run_generation(recipe).complete
    capsys.readouterr()
    assert dd_main(["train", *train_argv(pairs, output, 4)]) == 1
    assert "no longer holds the pairs" in capsys.readouterr().err
    shutil.rmtree(pairs)
    shutil.copytree(var_pairs, pairs)  # the original pairs back: the run resumes
    assert dd_main(["train", *train_argv(pairs, output, 4)]) == 0
    assert '"steps": 4' in (output / "student" / "student.json").read_text()


def test_init_from_starts_from_a_saved_student_of_the_same_teacher(var_pairs, tmp_path, capsys):
    source = tmp_path / "source"
    assert dd_main(["train", *train_argv(var_pairs, source, 2)]) == 0
    # The weights copied in are the source's, bit for bit.
    student = dd.load_student(source / "student")
    with torch.no_grad():
        for parameter in student.backbone.parameters():
            parameter.add_(1.0)
    (tmp_path / "direct").mkdir()
    initial_weights(student, str(source / "student"), tmp_path / "direct", resumed=False)
    before = dd.load_student(source / "student").student_state_dict()
    for name, tensor in student.student_state_dict().items():
        torch.testing.assert_close(tensor, before[name], atol=0, rtol=0, msg=name)
    again = tmp_path / "again"
    argv = [*train_argv(var_pairs, again, 1), "--student.init_from", str(source / "student")]
    assert dd_main(["train", *argv]) == 0
    source_card = read_card(source / "student")
    expected = {"student": str(source / "student"), "steps": 2, "record": source_card["record"]}
    assert read_card(again / "student")["record"]["init_from"] == expected
    # A resumed run does not read its source again (its checkpoint holds the weights): it may
    # have moved since; the card still says where the run started from.
    source.rename(tmp_path / "moved")
    assert dd_main(["train", *argv, "--run.max_steps", "2"]) == 0
    card = read_card(again / "student")
    assert card["record"]["steps"] == 2 and card["record"]["init_from"] == expected
    # ... and a resume may name where it is now (it is not read; the record stays the first)
    moved = ["--student.init_from", str(tmp_path / "moved" / "student")]
    assert dd_main(["train", *argv, "--run.max_steps", "3", *moved]) == 0
    assert read_card(again / "student")["record"]["init_from"] == expected
    # A student of another teacher is refused before any training.
    other = [
        *train_argv(var_pairs, tmp_path / "other", 1),
        "--student.init_from",
        "llamagen-digits",
    ]
    capsys.readouterr()
    assert dd_main(["train", *other]) == 1
    assert "distilled from teacher" in capsys.readouterr().err


def test_init_from_a_student_of_other_backbone_options_is_refused():
    # The shipped llamagen-digits student has the paper's readout; the default is the other.
    teacher = load_tiny_teacher("llamagen-digits")
    student = DDStudent(teacher, (0, 20), 64, noise_logit_scale=0.0)
    with pytest.raises(ValueError) as refused:
        initialise_from(student, "llamagen-digits")
    assert str(refused.value).endswith(
        "was trained with student.backbone_options {'teacher_aligned': False} and this student "
        "is built with {}: give the card's backbone_options to train it further"
    )


def test_a_run_stopped_before_its_student_was_written_writes_it_on_rerun(
    var_pairs, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "run"
    argv = train_argv(var_pairs, output, 2)
    assert dd_main(["train", *argv]) == 0
    weights = output / "student" / "student.safetensors"
    written = weights.read_bytes()
    recipe_written = (output / "recipe.yaml").stat().st_mtime_ns
    # A kill after the last checkpoint, before the student was written; rerunning said
    # "nothing to train" and never wrote it.
    shutil.rmtree(output / "student")
    assert dd_main(["train", *argv]) == 0
    assert weights.read_bytes() == written  # the checkpoint's EMA weights, as fit wrote them
    record = read_card(output / "student")["record"]
    assert record["steps"] == 2 and record["written_from"] == str(output / "checkpoints/last.ckpt")
    # The fit that made the checkpoint wrote no card (its student was removed): no segment.
    assert record["segments"] == [] and record["fit_seconds"] is None
    assert (output / "recipe.yaml").stat().st_mtime_ns == recipe_written  # not rewritten
    # A save interrupted between its two files leaves a folder without a card (not a
    # student, which the rerun above rewrites), never new weights under the old card.
    import safetensors.torch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_student(dd.load_student(output / "student"), output / "student", TINY_VAR)
    assert not (output / "student" / "student.json").exists()
    monkeypatch.undo()
    # An unreadable last checkpoint (an interrupted save) is one line, not a traceback.
    (output / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    capsys.readouterr()
    assert dd_main(["train", *argv]) == 1
    error = capsys.readouterr().err
    assert "last.ckpt cannot be read (RuntimeError: an interrupted save?)" in error
    assert "Traceback" not in error


def test_recipe_errors_are_found_before_the_pairs_load(var_pairs, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the pairs were loaded before the recipe was checked")

    monkeypatch.setattr("dd.data.load_pairs", no_loading)
    output = tmp_path / "refused"
    for override, message in (
        (["--pairs.num_heldout", "1000"], "num_heldout must be in [0, 48), got 1000"),
        (["--student.timesteps", "[0, 9]"], "timestep 9 is not an AR step boundary"),
        (["--student.split_token", "999"], "split_token must be in [0, 130], got 999"),
        (["--loss.perceptual", "lpips_vgg", "--loss.vgg16_path", str(tmp_path / "vgg.pth")],
         "LPIPS-VGG needs torchvision's ImageNet VGG16 weights"),
        (["--loss.perceptual_weight", "0", "--student.split_token", "55"],
         "loss.perceptual_weight is 0, so the embedding head is never trained"),
        (["--pairs.memory_map", str(tmp_path / "nowhere" / "copies")],
         "its parent " + str(tmp_path / "nowhere") + " does not exist"),
    ):  # fmt: skip
        assert dd_main(["train", *train_argv(var_pairs, output, 2), *override]) == 1
        assert message in capsys.readouterr().err, override
    assert not output.exists()  # nothing written for a run that never started


def test_a_run_folder_another_run_is_writing_is_refused(var_pairs, tmp_path, capsys):
    """Two ``dd train`` into one run folder (a rerun while the first still ran) both wrote
    its checkpoints and student; the second is refused now, before it writes anything."""
    output = tmp_path / "in_use"
    with FolderLock(output, "dd train"):
        assert dd_main(["train", *train_argv(var_pairs, output, 2)]) == 1
    error = capsys.readouterr().err
    assert f"is being written by another dd train run (pid {os.getpid()} on " in error
    assert sorted(p.name for p in output.iterdir()) == [".dd-train.lock"]  # nothing written


def train_on_two_processes(argv: list[str]) -> subprocess.CompletedProcess:
    """``dd train argv`` on two gloo DDP processes (a subprocess: Lightning's launcher re-runs
    the command for rank 1); the run must succeed."""
    command = [sys.executable, "-m", "dd.cli", "train", *argv]
    command += ["--run.devices", "2", "--run.accelerator", "cpu"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# The teacher-KL term on (the tiny var recipe leaves it off; its prior is on): its sum over
# predicted positions, whose number per sample depends on the timestep, must be normalised by
# the global count for DDP's average of the ranks' gradients to be the global batch's.
WITH_TEACHER_KL = ["--loss.teacher_kl_weight", "1.0", "--loss.cache_teacher_kl_targets", "true"]


@pytest.mark.parametrize("loss", [[], WITH_TEACHER_KL], ids=["ce_perceptual", "teacher_kl"])
def test_two_ddp_processes_train_the_same_student_as_one(var_pairs, tmp_path, loss):
    """gloo on CPU: each rank takes half of every global batch and DDP averages the gradients,
    so 3 steps on 2 processes give the 1-process weights to float32 reduction order: 1e-4, room
    for other CPUs' reductions (measured here: 6.6e-6 without the teacher-KL term, 1.0e-5 with
    it; 2.0e-3 with it when each rank took its own mean). The two processes read the pairs
    from one memory-mapped copy (``pairs.memory_map``), made once by the first before
    Lightning starts the second; the one process holds them in memory."""
    one, two, copies = tmp_path / "one", tmp_path / "two", tmp_path / "mapped"
    assert dd_main(["train", *train_argv(var_pairs, one, 3), *loss]) == 0
    mapped = ["--pairs.memory_map", str(copies)]
    done = train_on_two_processes(
        [*train_argv(var_pairs, two, 3), "--run.strategy", "ddp", *mapped, *loss]
    )
    assert "distributed_backend=gloo" in done.stderr + done.stdout
    assert (done.stderr + done.stdout).count("making a memory-mapped copy") == 1
    made = [p.name for p in copies.iterdir() if p.suffix != ".lock"]
    assert made == [identity_key(pair_identity(var_pairs))]
    single = dd.load_student(one / "student").student_state_dict()
    double = dd.load_student(two / "student").student_state_dict()
    for name, tensor in single.items():
        torch.testing.assert_close(double[name], tensor, atol=1e-4, rtol=1e-4, msg=name)


def test_a_run_resumes_with_moved_pairs_on_another_process_count(var_pairs, tmp_path, capsys):
    """A pre-empted run restarted on another node: the pair folder at another path (the same
    pairs: their identity is checked, not the path) and 2 DDP processes instead of 1 (global
    batch s is the same pairs and timesteps whatever the process count). It resumes, and its
    student equals an uninterrupted 1-process run to 1e-4 (DDP's reduction order, as above).
    Another global batch is still refused."""
    straight, run, moved = tmp_path / "straight", tmp_path / "run", tmp_path / "moved"
    assert dd_main(["train", *train_argv(var_pairs, straight, 4)]) == 0
    assert dd_main(["train", *train_argv(var_pairs, run, 2)]) == 0
    shutil.copytree(var_pairs, moved)
    done = train_on_two_processes([*train_argv(moved, run, 4), "--run.strategy", "ddp"])
    assert "Restored all states from the checkpoint" in done.stdout + done.stderr  # resumed
    assert '"steps": 4' in (run / "student" / "student.json").read_text()
    single = dd.load_student(straight / "student").student_state_dict()
    resumed = dd.load_student(run / "student").student_state_dict()
    for name, tensor in single.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
    capsys.readouterr()
    bigger = [*train_argv(moved, run, 6), "--run.global_batch_size", "16"]
    assert dd_main(["train", *bigger]) == 1
    assert "run.global_batch_size: 8 -> 16" in capsys.readouterr().err
    # The run folder itself elsewhere (another mount, a relative path) resumes too ...
    copied = tmp_path / "copied"
    shutil.copytree(run, copied)
    assert dd_main(["train", *train_argv(moved, copied, 6)]) == 0
    assert '"steps": 6' in (copied / "student" / "student.json").read_text()
    # ... but pairs of the same settings with other records (made elsewhere) are refused: the
    # run recorded its shards' sha256.
    records = list(read_shard(moved / "shard-000000.tar"))
    records[0]["tokens"][0] = (int(records[0]["tokens"][0]) + 1) % 64
    rewrite_shard(moved, 0, records)
    capsys.readouterr()
    assert dd_main(["train", *train_argv(moved, copied, 8)]) == 1
    assert "no longer holds the pairs" in capsys.readouterr().err


def test_training_without_the_perceptual_term_needs_no_vgg_file(var_pairs, tmp_path, capsys):
    """CE-only training (``loss.perceptual_weight`` 0, every token from the logits head) never
    calls LPIPS, so a missing VGG16 file is no reason to stop; with the term on, it is (the
    one-line error names the file)."""
    missing = tmp_path / "nowhere" / "vgg16-397923af.pth"
    argv = [*train_argv(var_pairs, tmp_path / "ce", 2), "--loss.perceptual", "lpips_vgg"]
    argv += ["--loss.vgg16_path", str(missing), "--student.split_token", "130"]
    assert dd_main(["train", *argv, "--loss.perceptual_weight", "0"]) == 0
    assert (tmp_path / "ce" / "student" / "student.safetensors").is_file()
    capsys.readouterr()
    argv[argv.index(str(tmp_path / "ce"))] = str(tmp_path / "lpips")
    assert dd_main(["train", *argv]) == 1
    assert str(missing) in capsys.readouterr().err


def test_ddp_trains_without_the_perceptual_term(var_pairs, tmp_path):
    """With loss.perceptual_weight 0 the embedding head gets no gradient; DDP is told so
    (it failed at the second step: "parameters that were not used in producing the loss"),
    also when the recipe leaves the strategy to Lightning ("auto", the default)."""
    # "auto" (the default) picks DDP for 2 devices; "ddp" takes the same path in make_trainer.
    argv = [*train_argv(var_pairs, tmp_path, 3), "--run.strategy", "auto"]
    # the tiny var recipe samples logits only
    train_on_two_processes([*argv, "--loss.perceptual_weight", "0"])
    assert (tmp_path / "student" / "student.safetensors").is_file()


def test_a_cosine_run_resumes_only_with_its_own_length(tmp_path):
    """The cosine schedule's rates depend on run.max_steps: a longer resume is refused; a
    constant-rate run may go on longer; progress bars and threads may always change."""
    recipe = read_recipe(TrainRecipe, RECIPES[0].parent / "distill_tiny_var.yaml")
    cosine = dataclasses.replace(
        recipe,
        optim=dataclasses.replace(recipe.optim, schedule="cosine"),
        run=dataclasses.replace(recipe.run, output=str(tmp_path), max_steps=100),
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "recipe.yaml").write_text(dump_yaml(cosine))
    check_resumable(
        dataclasses.replace(
            cosine, run=dataclasses.replace(cosine.run, progress_bar=False, num_threads=2)
        ),
        tmp_path,
    )
    longer = dataclasses.replace(cosine, run=dataclasses.replace(cosine.run, max_steps=200))
    with pytest.raises(ValueError, match=r"run.max_steps: 100 -> 200"):
        check_resumable(longer, tmp_path)
    constant = dataclasses.replace(cosine, optim=recipe.optim)
    (tmp_path / "recipe.yaml").write_text(dump_yaml(constant))
    check_resumable(dataclasses.replace(constant, run=longer.run), tmp_path)


def test_a_missing_teacher_checkpoint_is_one_line_not_a_traceback(tmp_path, capsys):
    """dd train reports a missing file as dd generate / eval / sample do: exit 1 and a line
    naming the file (it raised before). On the CPU: the recipe's 8 GPUs are refused first."""
    code = dd_main(
        ["train", "--recipe", str(RECIPES[0].parent / "distill_var_d16.yaml"),
         "--teacher.checkpoint", str(tmp_path / "var_d16.pth"),
         "--teacher.tokenizer_checkpoint", str(tmp_path / "vae.pth"),
         "--run.output", str(tmp_path / "run"), "--run.accelerator", "cpu", "--run.devices", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("dd train: ") and "var_d16.pth" in err


def test_an_accelerator_this_machine_lacks_is_one_line(var_pairs, tmp_path, capsys):
    """The paper recipes run on ``gpu``; on a machine without one Lightning refuses the run
    section, and dd train and dd generate print its message in one line (a traceback before).
    ``mps`` stands in: absent on every Linux machine, GPU or not."""
    argv = [*train_argv(var_pairs, tmp_path / "run", 2), "--run.accelerator", "mps"]
    generate = ["--recipe", str(RECIPES[0].parent / "generate_tiny_var.yaml")]
    generate += ["--output.folder", str(tmp_path / "pairs"), "--pairs.num_pairs", "16"]
    for command in (["train", *argv], ["generate", *generate, "--run.accelerator", "mps"]):
        capsys.readouterr()
        assert dd_main(command) == 1
        err = capsys.readouterr().err
        assert f"dd {command[0]}: `MPSAccelerator`" in err and len(err.strip().splitlines()) == 1
        assert err.strip().endswith("instead: --run.accelerator cpu --run.devices 1)")
    assert not (tmp_path / "run").exists()  # refused before loading or writing anything
