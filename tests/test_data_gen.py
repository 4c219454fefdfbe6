"""Pair generation (data_gen) with the shipped tiny LlamaGen (``{tiny: llamagen-digits}``).

The reference data set is 40 pairs in shards of 16 (the last one partial), made by one process
at batch 16. Two gloo DDP processes at batch 8, and a run interrupted after one shard then
resumed at batch 8, must reproduce it byte for byte; every stored pair must be what the map
gives; bad folders must be refused with the offending shard or both fingerprints named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from data_gen.config import (
    GenerateRecipe,
    OutputSettings,
    PairSettings,
    RunSettings,
    SamplingOverrides,
)
from data_gen.engine import ShardWriter, run_generation, run_identity
from data_gen.pairs import draw_sample, map_noise, sample_seed
from data_gen.shards import (
    MANIFEST_NAME,
    FolderLock,
    ShardError,
    describe_difference,
    plan_shards,
    read_shard,
    sha256_file,
)
from data_gen.verify import verify_folder
from dd.config import dump_yaml
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.protocol import SamplingConfig
from teachers.tiny.registry import tiny_sampling
from tests.shard_edit import rewrite_shard

REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_PAIRS, SHARD_SIZE, SEED = 40, 16, 7
TEACHER = "llamagen-digits"  # 8x8 = 64 tokens in 64 AR steps, V=64, C=8, 10 classes
NUM_TOKENS, CODE_DIM, NUM_CLASSES = 64, 8, 10
DDP_TIMEOUT_S = 600


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def spec() -> TeacherSpec:
    return TeacherSpec(tiny=TEACHER)


@pytest.fixture(scope="module")
def teacher(spec):
    teacher = load_teacher(spec)
    assert teacher.geometry.num_tokens == NUM_TOKENS
    assert tuple(teacher.codebook.shape) == (64, CODE_DIM) and teacher.num_classes == NUM_CLASSES
    return teacher


def make_recipe(spec, folder, *, batch_size=16, **pairs) -> GenerateRecipe:
    return GenerateRecipe(
        teacher=spec,
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling(TEACHER))),
        pairs=PairSettings(num_pairs=NUM_PAIRS, seed=SEED, **pairs),
        output=OutputSettings(folder=str(folder), shard_size=SHARD_SIZE),
        run=RunSettings(batch_size=batch_size, accelerator="cpu", devices=1, progress_bar=False),
    )


@pytest.fixture(scope="module")
def reference(spec, teacher, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pairs") / "reference"
    result = run_generation(make_recipe(spec, folder), teacher=teacher)
    assert result.complete
    return folder


def records(folder: Path) -> list[dict]:
    out = []
    for shard in plan_shards(NUM_PAIRS, SHARD_SIZE):
        out += list(read_shard(folder / shard.name))
    return out


def assert_same_data_set(folder: Path, reference: Path) -> None:
    ours, theirs = records(folder), records(reference)
    assert [r["index"] for r in ours] == list(range(NUM_PAIRS))
    for a, b in zip(ours, theirs, strict=True):
        assert a["index"] == b["index"] and a["label"] == b["label"]
        assert a["noise"].dtype == b["noise"].dtype
        assert a["noise"].numpy().tobytes() == b["noise"].numpy().tobytes()
        assert torch.equal(a["tokens"], b["tokens"])
    for shard in plan_shards(NUM_PAIRS, SHARD_SIZE):  # tar bytes are deterministic too
        assert sha256_file(folder / shard.name) == sha256_file(reference / shard.name)
    manifest, expected = (json.loads((f / MANIFEST_NAME).read_text()) for f in (folder, reference))
    assert manifest["status"] == "complete"
    assert manifest["shards"] == expected["shards"]


# --- Samples depend on (seed, index) only ----------------------------------------------------


def test_sample_depends_only_on_seed_and_index():
    shape = dict(num_tokens=16, code_dim=8, num_classes=10)
    label, noise = draw_sample(3, 10, **shape)
    again = draw_sample(3, 10, **shape)
    assert label == again[0] and torch.equal(noise, again[1])
    assert not torch.equal(noise, draw_sample(3, 11, **shape)[1])
    assert not torch.equal(noise, draw_sample(4, 10, **shape)[1])
    assert sample_seed(3, 10) != sample_seed(10, 3)
    # balanced labels cycle through the classes; the noise stream does not change with the mode
    balanced = [draw_sample(3, i, labels="balanced", **shape) for i in range(20)]
    assert [b[0] for b in balanced] == [i % 10 for i in range(20)]
    assert torch.equal(balanced[10][1], noise)
    half = draw_sample(3, 10, noise_dtype=torch.float16, **shape)[1]
    assert half.dtype == torch.float16 and torch.equal(half, noise.half())


def test_seeds_past_eight_bytes_are_refused_before_a_folder_is_stamped():
    """``sample_seed`` hashes the seed as 8 bytes: 2**64 raised an OverflowError inside the
    generation, after the folder was stamped with it (the fixed rerun was then refused)."""
    assert PairSettings(seed=2**64 - 1).seed == 2**64 - 1
    with pytest.raises(ValueError, match=r"pairs.seed must be in \[0, 2\*\*64\)"):
        PairSettings(seed=2**64)
    with pytest.raises(ValueError, match="seed and index"):
        sample_seed(2**64, 0)
    with pytest.raises(ValueError, match="seed and index"):
        sample_seed(0, -1)


def test_an_integer_setting_is_its_float(spec, teacher):
    """``cfg_scale=2`` and ``2.0`` are one setting: one settings key (their JSON differed, so
    the API's resume of a folder made with the other was refused with no differing key)."""
    recipe = make_recipe(spec, "unused")
    keys = {
        run_identity(teacher, dataclasses.replace(recipe, sampling=sampling)).settings_key
        for sampling in (
            dataclasses.replace(recipe.sampling, temperature=1, top_p=1),
            dataclasses.replace(recipe.sampling, temperature=1.0, top_p=1.0),
        )
    }
    assert len(keys) == 1
    assert isinstance(recipe.sampling.resolve(SamplingConfig()).cfg_scale, float)
    # A folder made through the API with an integer before this: its key differs, and the
    # refusal now names the setting (2 == 2.0 hid it).
    ours, theirs = {"sampling": {"cfg_scale": 2.0}}, {"sampling": {"cfg_scale": 2}}
    assert describe_difference(ours, theirs) == ["sampling.cfg_scale: this run 2.0, folder 2"]


def test_shards_are_global_index_ranges():
    shards = plan_shards(40, 16)
    assert [(s.start, s.stop) for s in shards] == [(0, 16), (16, 32), (32, 40)]
    assert [s.name for s in shards] == [f"shard-00000{k}.tar" for k in range(3)]


# --- The reference run -----------------------------------------------------------------------


def test_records_hold_the_drawn_noise_and_the_mapped_tokens(reference, teacher, spec):
    manifest = json.loads((reference / MANIFEST_NAME).read_text())
    assert manifest["status"] == "complete"
    assert manifest["teacher"]["fingerprint"] == teacher.fingerprint()
    assert manifest["counts"] == {
        "num_pairs": NUM_PAIRS,
        "num_shards": 3,
        "shard_size": SHARD_SIZE,
        "total_bytes": sum(s["bytes"] for s in manifest["shards"]),
    }
    for entry in manifest["shards"]:
        assert sha256_file(reference / entry["file"]) == entry["sha256"]
    stored = records(reference)
    for record in stored:
        label, noise = draw_sample(
            SEED, record["index"], num_tokens=NUM_TOKENS, code_dim=CODE_DIM, num_classes=NUM_CLASSES
        )
        assert record["label"] == label and torch.equal(record["noise"], noise)
        assert record["noise"].dtype == torch.float32
        assert record["noise"].shape == (NUM_TOKENS, CODE_DIM)
        assert record["tokens"].dtype == torch.int16 and record["tokens"].shape == (NUM_TOKENS,)
        assert record["teacher"] == teacher.fingerprint()
    # A fresh, free-running map of the stored noise gives the stored tokens.
    labels = torch.tensor([r["label"] for r in stored])
    noise = torch.stack([r["noise"] for r in stored])
    sampling = make_recipe(spec, reference).sampling.resolve(teacher.default_sampling())
    fresh = map_noise(teacher, labels, noise, sampling, make_recipe(spec, reference).flow)
    assert torch.equal(fresh, torch.stack([r["tokens"] for r in stored]).long())


def test_verify_shards_remaps_every_record(reference, teacher):
    report = verify_folder(reference, teacher=teacher, num_records=NUM_PAIRS)
    assert report.ok, report.summary()
    assert report.records_checked == NUM_PAIRS and report.tokens_checked == NUM_PAIRS * NUM_TOKENS


def test_verify_shards_command_loads_the_teacher_from_the_manifest(reference):
    import argparse

    from data_gen.verify_command import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(reference), "--num-records", "8"])) == 0


def test_verify_shards_takes_the_teacher_of_any_recipe_and_errors_in_one_line(
    reference, tmp_path, capsys
):
    """``--teacher-recipe`` (moved checkpoints): a distill recipe's teacher section serves as
    well as a generate recipe's (it was refused with a traceback: "Group 'pairs' does not
    accept option 'folder'"); a missing file or one without a teacher is one line, exit 1."""
    import argparse

    from data_gen.verify_command import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    distill = REPO_ROOT / "recipes" / "distill_tiny_llamagen.yaml"
    assert run(parser.parse_args([str(reference), "--teacher-recipe", str(distill)])) == 0
    (tmp_path / "empty.yaml").write_text("run:\n  seed: 0\n")
    (tmp_path / "broken.yaml").write_text("teacher: [\n")
    for recipe, message in [("nowhere.yaml", "recipe file not found"),
                            ("empty.yaml", "has no teacher section"),
                            ("broken.yaml", "is not valid YAML")]:  # fmt: skip
        capsys.readouterr()
        args = parser.parse_args([str(reference), "--teacher-recipe", str(tmp_path / recipe)])
        assert run(args) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_shipped_tiny_var_pairs_verify(tmp_path):
    """VAR: AR steps of several tokens (whole scales); the teacher named by its tiny name."""
    folder = tmp_path / "var"
    recipe = GenerateRecipe(
        teacher=TeacherSpec(tiny="var-digits"),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling("var-digits"))),
        pairs=PairSettings(num_pairs=24, seed=1, noise_dtype="float16"),
        output=OutputSettings(folder=str(folder), shard_size=16),
        run=RunSettings(batch_size=8, accelerator="cpu", progress_bar=False),
    )
    assert run_generation(recipe).complete
    report = verify_folder(folder, num_records=24)  # teacher loaded from the manifest's spec
    assert report.ok and report.records_checked == 24, report.summary()
    assert next(read_shard(folder / "shard-000000.tar"))["noise"].dtype == torch.float16


# --- Device count and restarts do not change the data set -------------------------------------


def run_two_gloo_processes(recipe: GenerateRecipe, recipe_path: Path, strategy="ddp") -> None:
    """``dd generate`` of ``recipe`` on two gloo CPU processes (``ddp``: Lightning re-runs the
    module for rank 1; ``ddp_spawn``: it spawns both ranks and fails if either fails); fails
    the test with the end of stderr unless the command succeeds."""
    recipe_path.write_text(dump_yaml(recipe))
    command = [
        sys.executable,
        "-m",
        "data_gen.generate_command",
        "--recipe",
        str(recipe_path),
        "--run.devices",
        "2",
        "--run.strategy",
        strategy,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout


def test_two_ddp_processes_at_batch_8_equal_one_process_at_batch_16(spec, reference, tmp_path):
    recipe = make_recipe(spec, tmp_path / "ddp", batch_size=8)
    run_two_gloo_processes(recipe, tmp_path / "recipe.yaml")
    assert_same_data_set(tmp_path / "ddp", reference)


def test_fewer_pending_shards_than_ranks_leave_a_rank_idle(spec, reference, tmp_path):
    """One shard missing, two ranks: rank 1 has nothing to produce. Lightning refused a rank
    with an empty loader, which failed the run and left the manifest in progress for good.
    ``ddp_spawn``: under ``ddp`` rank 0's exit code does not show that rank 1 failed."""
    folder = tmp_path / "one_missing"
    shutil.copytree(reference, folder)
    (folder / "shard-000001.tar").unlink()
    (folder / "shard-000001.json").unlink()
    recipe = make_recipe(spec, folder, batch_size=8)
    run_two_gloo_processes(recipe, tmp_path / "recipe.yaml", strategy="ddp_spawn")
    assert_same_data_set(folder, reference)


def start_rank_fault(recipe, tmp_path, mode: str, seconds: float) -> subprocess.Popen:
    """``dd generate`` of ``recipe`` on two ``ddp`` processes, rank 1 slow or failing at its
    last batch (``tests/generate_rank_fault.py``); the output goes to tmp_path/out.txt."""
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(dump_yaml(recipe))
    command = [sys.executable, "-m", "tests.generate_rank_fault", mode, "1", str(seconds)]
    command += ["--recipe", str(recipe_path), "--run.devices", "2", "--run.strategy", "ddp"]
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115 (the children inherit it)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)


def test_a_multi_process_run_returns_once_every_rank_is_done(spec, reference, tmp_path):
    """Rank 0 (shards 0 and 2) finished first and returned, exit code 0, while rank 1 was
    still writing shard 1: a script going on to ``dd train`` found the folder in progress.
    Now the command returns when the data set is complete, and rank 0 reports it."""
    folder = tmp_path / "pairs"
    process = start_rank_fault(make_recipe(spec, folder, batch_size=8), tmp_path, "slow", 5)
    assert process.wait(timeout=DDP_TIMEOUT_S) == 0, (tmp_path / "out.txt").read_text()[-3000:]
    assert json.loads((folder / MANIFEST_NAME).read_text())["status"] == "complete"
    assert_same_data_set(folder, reference)


def test_a_multi_process_run_with_a_failed_rank_does_not_exit_0(spec, tmp_path):
    """Rank 1 fails before its last shard: rank 0 used to exit 0 on the unfinished run."""
    folder = tmp_path / "pairs"
    process = start_rank_fault(make_recipe(spec, folder, batch_size=8), tmp_path, "fail", 5)
    returncode = process.wait(timeout=DDP_TIMEOUT_S)
    output = (tmp_path / "out.txt").read_text()
    assert returncode != 0, output[-3000:]
    assert "simulated crash of rank 1" in output
    assert json.loads((folder / MANIFEST_NAME).read_text())["status"] == "in_progress"


def test_ranks_share_the_resume_checks_and_report_every_damaged_shard(spec, reference, tmp_path):
    """Rank 0 hashed every finished shard while the others waited; each rank now hashes a
    share (rank 0 shards 0 and 2, rank 1 shard 1), and every rank stops with every finding."""
    folder = tmp_path / "damaged"
    shutil.copytree(reference, folder)
    for name in ("shard-000000.tar", "shard-000001.tar"):  # same size, other bytes
        data = bytearray((folder / name).read_bytes())
        data[-2000] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(dump_yaml(make_recipe(spec, folder, batch_size=8)))
    command = [sys.executable, "-m", "data_gen.generate_command", "--recipe", str(recipe_path)]
    command += ["--run.devices", "2", "--run.strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S
    )
    assert done.returncode == 1, done.stderr[-3000:]
    error = next(line for line in done.stderr.splitlines() if line.startswith("dd generate:"))
    assert "shard-000000.tar is corrupt" in error
    assert "shard-000001.tar is corrupt" in done.stderr  # rank 1's finding, on the next line
    assert json.loads((folder / MANIFEST_NAME).read_text())["status"] == "complete"  # untouched


class CrashAfterShards(Callback):
    """Simulates a crash: raises once the writer has published ``count`` shards."""

    def __init__(self, count: int):
        self.count = count

    def on_predict_batch_end(self, trainer, *args, **kwargs) -> None:
        writer = next(c for c in trainer.callbacks if isinstance(c, ShardWriter))
        if len(writer.published) >= self.count:
            raise RuntimeError("simulated crash")


def test_interrupted_run_resumes_to_the_same_data_set(spec, teacher, reference, tmp_path):
    folder = tmp_path / "resumed"
    recipe = make_recipe(spec, folder, batch_size=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_generation(recipe, teacher=teacher, callbacks=[CrashAfterShards(1)])
    assert sorted(p.name for p in folder.glob("shard-*.tar")) == ["shard-000000.tar"]
    assert not list(folder.glob(".*.partial"))  # the open shard was discarded
    assert json.loads((folder / MANIFEST_NAME).read_text())["status"] == "in_progress"
    # A hard kill leaves a partial file, or a receipt whose shard was never renamed. The
    # resume removes both before it writes: a finished shard's partial file is never reopened,
    # and the next crash (after shard 1) shows that shard 2's stale receipt is gone.
    (folder / ".shard-000001.tar.partial").write_bytes(b"half a shard")
    (folder / ".shard-000000.tar.partial").write_bytes(b"a stale copy of a finished shard")
    shutil.copy(reference / "shard-000002.json", folder / "shard-000002.json")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_generation(recipe, teacher=teacher, callbacks=[CrashAfterShards(1)])
    assert not list(folder.glob(".*.partial"))
    assert sorted(p.name for p in folder.glob("shard-*")) == [
        "shard-000000.json",
        "shard-000000.tar",
        "shard-000001.json",
        "shard-000001.tar",
    ]
    result = run_generation(recipe, teacher=teacher)
    assert result.complete
    assert_same_data_set(folder, reference)


class CrashAtStart(Callback):
    def on_predict_start(self, trainer, pl_module) -> None:
        raise RuntimeError("simulated crash")


def test_a_complete_folder_missing_a_shard_is_in_progress_until_regenerated(
    spec, teacher, reference, tmp_path
):
    """A deleted shard of a complete folder (what the corrupt-shard error asks for): the
    regeneration marks the manifest in progress before it writes, so a crash leaves a folder
    that readers (and ``dd demo``) do not take as finished."""
    folder = tmp_path / "regenerated"
    shutil.copytree(reference, folder)
    (folder / "shard-000001.tar").unlink()
    (folder / "shard-000001.json").unlink()
    recipe = make_recipe(spec, folder)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_generation(recipe, teacher=teacher, callbacks=[CrashAtStart()])
    assert json.loads((folder / MANIFEST_NAME).read_text())["status"] == "in_progress"
    assert run_generation(recipe, teacher=teacher).complete
    assert_same_data_set(folder, reference)


# --- Bad input is refused --------------------------------------------------------------------


def test_a_folder_another_run_is_writing_is_refused_and_left_alone(spec, teacher, tmp_path):
    """A second ``dd generate`` into a folder in use deleted the first run's ``.partial`` file
    (taken for a crash's leftover) under it; now it is refused, naming the holder."""
    folder = tmp_path / "in_use"
    other_run = FolderLock(folder)
    other_run.acquire()
    partial = folder / ".shard-000000.tar.partial"
    partial.write_bytes(b"the other run's shard in the making")
    try:
        with pytest.raises(
            ShardError, match=rf"being written by another dd generate run \(pid {os.getpid()} on "
        ):
            run_generation(make_recipe(spec, folder), teacher=teacher)
        assert partial.read_bytes() == b"the other run's shard in the making"
    finally:
        other_run.release()
    assert run_generation(make_recipe(spec, folder), teacher=teacher).complete  # then resumes


def test_folder_of_other_settings_is_refused_with_both_keys(spec, teacher, reference):
    recipe = make_recipe(spec, reference, labels="balanced")
    with pytest.raises(ShardError) as error:
        run_generation(recipe, teacher=teacher)
    message = str(error.value)
    assert "refusing to mix" in message and "pairs.labels: this run 'balanced'" in message
    assert message.count(teacher.fingerprint()) == 2


def test_settings_the_teacher_refuses_leave_no_folder_behind(spec, teacher, tmp_path):
    """The teacher's own check of the sampling settings runs before the folder is touched, so
    the fixed recipe can run in the same folder afterwards."""
    folder = tmp_path / "pairs"
    bad = make_recipe(spec, folder)
    var_only = dataclasses.replace(bad.sampling, cfg_schedule="linear")  # LlamaGen: constant
    bad = dataclasses.replace(bad, sampling=var_only)
    with pytest.raises(ValueError, match="constant scale"):
        run_generation(bad, teacher=teacher)
    assert not folder.exists()


def test_an_aborted_shard_leaves_no_file_and_no_error_behind(tmp_path, monkeypatch):
    """abort() closes the tar writer before the file: closing only the file left the writer
    to raise "write to closed file" when garbage-collected."""
    import gc
    import sys

    from data_gen.shards import OpenShard, RunIdentity, encode_record

    caught = []
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: caught.append(raised.exc_value))
    identity = RunIdentity("teacher", "family", {})
    shard = OpenShard(tmp_path, plan_shards(4, 4)[0], identity)
    shard.write(encode_record(0, 1, torch.zeros(2, 3), torch.zeros(2, dtype=torch.int16), "t"))
    shard.abort()
    del shard
    gc.collect()
    assert caught == [] and list(tmp_path.iterdir()) == []


def test_ranks_finalizing_the_manifest_together_both_succeed(reference, monkeypatch):
    """Every rank writes the manifest once all shards are published; a second writer that
    renames between the first one's write and rename must not break it (one shared temporary
    name made the first ``os.replace`` fail)."""
    from data_gen import shards

    path = reference / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    replace, interleaved = os.replace, []

    def other_rank_first(source, target):
        if not interleaved:
            interleaved.append(source)
            shards.write_json_atomic(path, manifest)  # the other rank, in between
        replace(source, target)

    monkeypatch.setattr(shards.os, "replace", other_rank_first)
    shards.write_json_atomic(path, manifest)
    assert json.loads(path.read_text()) == manifest
    assert not list(reference.glob(f".*{shards.PARTIAL_SUFFIX}"))


def test_folder_of_another_teacher_is_refused_with_both_fingerprints(
    spec, teacher, reference, tmp_path
):
    folder = tmp_path / "other"
    shutil.copytree(reference, folder)
    other = "0123456789abcdef"
    for path in [folder / MANIFEST_NAME, *folder.glob("shard-*.json")]:
        path.write_text(path.read_text().replace(teacher.fingerprint(), other))
    with pytest.raises(ShardError) as error:
        run_generation(make_recipe(spec, folder), teacher=teacher)
    assert f"this run {teacher.fingerprint()}, folder {other}" in str(error.value)
    report = verify_folder(folder, teacher=teacher, num_records=4)
    assert not report.ok


def test_verify_shards_finds_records_altered_under_consistent_hashes(teacher, reference, tmp_path):
    """A shard rewritten with one token, one label and one noise value changed, its receipt
    and manifest updated to match (so the file checks pass): the re-map names the token's
    record, the (seed, index) draw names the other two."""
    folder = tmp_path / "altered"
    shutil.copytree(reference, folder)
    path = folder / "shard-000000.tar"
    records = list(read_shard(path))
    token_record, label_record, noise_record = records[1], records[4], records[9]
    token_record["tokens"][5] = (int(token_record["tokens"][5]) + 1) % teacher.vocab_size
    label_record["label"] = (label_record["label"] + 1) % NUM_CLASSES
    noise_record["noise"][3, 2] += 0.5
    rewrite_shard(folder, 0, records)

    report = verify_folder(folder, teacher=teacher, num_records=NUM_PAIRS)
    assert not report.ok and report.shards_checked == 3  # every file check passed
    assert token_record["index"] in report.records_with_mismatch and report.token_mismatches >= 1
    drawn = [p for p in report.problems if "label/noise differ" in p]
    assert drawn == [
        f"record {r['index']}: label/noise differ from what (seed {SEED}, index) draws"
        for r in (label_record, noise_record)
    ]
    assert report.notes == []  # made and re-mapped on the CPU: nothing to explain
    # Made on GPUs (each shard records the device its records were computed on, whatever
    # run.accelerator said: "auto" is the default) and re-mapped on the CPU: the summary says
    # why tokens can differ and how to re-map them where they were made.
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert {entry["device"] for entry in manifest["shards"]} == {"cpu"}
    manifest["recipe"]["run"].update(accelerator="auto", batch_size=128)
    for entry in manifest["shards"]:
        entry["device"] = "cuda"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_folder(folder, teacher=teacher, num_records=NUM_PAIRS)
    assert not report.ok and len(report.notes) == 1
    assert "--device cuda, --batch-size 128" in report.notes[0]
    assert "  note: these pairs were made on cuda and are re-mapped on cpu" in report.summary()
    # A folder made before shards recorded their device: the recipe's accelerator decides.
    for entry in manifest["shards"]:
        del entry["device"]
    manifest["recipe"]["run"]["accelerator"] = "gpu"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "made on cuda" in verify_folder(folder, teacher=teacher, num_records=NUM_PAIRS).notes[0]


def test_truncated_shard_is_named(spec, teacher, reference, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(reference, folder)
    path = folder / "shard-000001.tar"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ShardError, match=r"shard-000001\.tar is truncated"):
        run_generation(make_recipe(spec, folder), teacher=teacher)
    report = verify_folder(folder, teacher=teacher, num_records=NUM_PAIRS)
    assert not report.ok
    assert any("shard-000001.tar is truncated" in p for p in report.problems)
    assert report.shards_checked == 2  # the intact shards are still checked


def test_shard_without_receipt_or_outside_the_plan_is_refused(spec, teacher, reference, tmp_path):
    folder = tmp_path / "noreceipt"
    shutil.copytree(reference, folder)
    (folder / "shard-000001.json").unlink()
    with pytest.raises(ShardError, match=r"shard-000001\.tar has no receipt"):
        run_generation(make_recipe(spec, folder), teacher=teacher)
    (folder / "shard-000001.tar").unlink()
    shutil.copy(folder / "shard-000000.tar", folder / "shard-000007.tar")
    with pytest.raises(ShardError, match=r"shard-000007\.tar is not a shard of this run's plan"):
        run_generation(make_recipe(spec, folder), teacher=teacher)


def test_unknown_teachers_list_the_known_ones(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown tiny teacher 'nope'.*'far-digits-flow'"):
        TeacherSpec(tiny="nope")  # refused by the spec (a dry run), every shipped name listed
    # A teacher `dd train-teacher --data-dir` wrote into tiny.json is known too.
    from teachers.tiny import registry

    shipped = registry.read_metadata()
    extended = {**shipped, "llamagen-shapes": shipped["llamagen-digits"]}
    monkeypatch.setattr(registry, "read_metadata", lambda weights_dir=None: extended)
    assert TeacherSpec(tiny="llamagen-shapes").tiny == "llamagen-shapes"
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"known families: \['llamagen', 'var'\].*far-digits"):
        TeacherSpec(family="mar", checkpoint="a", tokenizer_checkpoint="b")
    with pytest.raises(FileNotFoundError, match="teacher.checkpoint"):
        load_teacher(
            TeacherSpec(
                family="llamagen",
                checkpoint=str(tmp_path / "x.pt"),
                tokenizer_checkpoint=str(tmp_path / "y.pt"),
            )
        )


def test_output_folders_the_file_system_refuses_are_one_line_errors(spec, tmp_path, capsys):
    """A file as output.folder (refused up front), or in its path (an OSError from the run):
    `dd generate: ...` and exit code 1, not Lightning's traceback."""
    from data_gen.generate_command import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    recipe_path = tmp_path / "recipe.yaml"
    for folder, message in ((blocker, "is a file, not a folder"), (blocker / "pairs", "[Errno")):
        recipe_path.write_text(dump_yaml(make_recipe(spec, folder)))
        assert main(["--recipe", str(recipe_path)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("dd generate: ") and message in last and str(folder) in last


def test_verify_shards_checks_the_finished_shards_of_a_run_in_progress(
    reference, teacher, tmp_path, capsys
):
    """A run in progress lists no shard in its manifest: its finished shards were reported as
    not matching ("0/3 shards"); they are checked against their receipts. A manifest without
    its counts (edited by hand) is a one-line error, not a KeyError traceback."""
    from dd.cli import main

    folder = tmp_path / "in_progress"
    shutil.copytree(reference, folder)
    (folder / "shard-000002.tar").unlink()
    (folder / "shard-000002.json").unlink()
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (folder / MANIFEST_NAME).write_text(
        json.dumps({**manifest, "status": "in_progress", "shards": []})  # as open_manifest
    )
    report = verify_folder(folder, teacher=teacher, num_records=4)
    assert report.shards_checked == 2 and report.records_checked == 4
    assert [p for p in report.problems if "in_progress" not in p] == []
    assert not report.ok  # unfinished all the same
    del manifest["counts"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify-shards", str(folder), "--num-records", "0"]) == 1
    err = capsys.readouterr().err
    assert "lacks counts.num_pairs, counts.shard_size" in err and len(err.splitlines()) == 1
