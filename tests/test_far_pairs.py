"""DD pairs from a continuous-token teacher through ``dd generate`` (the shipped ``far-digits``).

No codebook: the stored noise ``[n, C]`` is the head's initial noise of every token and the
stored tokens ``[n, C]`` (float32) are what the head's deterministic sampler makes of it. Every
stored pair must equal ``map_noise`` of its noise (exactly in the run's batches of 4; to 1e-4
in one batch of 6, where matrix products may sum in another order), ``dd verify-shards`` must
accept the folder, and a discrete teacher must refuse ``head_steps``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_gen.config import SamplingOverrides
from data_gen.generate_command import main as generate_main
from data_gen.pairs import draw_sample
from data_gen.shards import plan_shards, read_shard
from data_gen.verify import verify_folder
from dd.teacher_spec import TeacherSpec, load_teacher
from teachers.far import map_noise
from teachers.protocol import ContinuousSamplingConfig
from tests.shard_edit import rewrite_shard

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "generate_tiny_far.yaml"
NUM_PAIRS, SHARD_SIZE, SEED, HEAD_STEPS = 6, 4, 3, 2
BATCH_SIZE = 4
OTHER_BATCH_ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_dd_generate_writes_the_heads_noise_to_token_map(tmp_path):
    folder = tmp_path / "pairs"
    argv = ["--recipe", str(RECIPE), "--output.folder", str(folder)]
    argv += ["--pairs.num_pairs", str(NUM_PAIRS), "--pairs.seed", str(SEED)]
    argv += ["--output.shard_size", str(SHARD_SIZE), "--run.batch_size", str(BATCH_SIZE)]
    argv += ["--sampling.head_steps", str(HEAD_STEPS), "--run.progress_bar", "false"]
    assert generate_main(argv) == 0
    records = [r for s in plan_shards(NUM_PAIRS, SHARD_SIZE) for r in read_shard(folder / s.name)]
    assert [r["index"] for r in records] == list(range(NUM_PAIRS))
    teacher = load_teacher(TeacherSpec(tiny="far-digits"))
    n, c = teacher.geometry.num_tokens, teacher.token_dim
    for record in records:
        label, noise = draw_sample(
            SEED, record["index"], num_tokens=n, code_dim=c, num_classes=10, labels="balanced"
        )
        assert record["label"] == label and torch.equal(record["noise"], noise)
        assert record["tokens"].dtype == torch.float32 and record["tokens"].shape == (n, c)
        assert record["teacher"] == teacher.fingerprint()
    labels = torch.tensor([r["label"] for r in records])
    noise = torch.stack([r["noise"] for r in records])
    stored = torch.stack([r["tokens"] for r in records])
    sampling = ContinuousSamplingConfig(cfg_scale=2.0, head_steps=HEAD_STEPS)
    for start in range(0, NUM_PAIRS, BATCH_SIZE):  # the run's batches: the same sums, exactly
        rows = slice(start, start + BATCH_SIZE)
        mapped = map_noise(teacher, labels[rows], noise[rows], sampling)
        torch.testing.assert_close(stored[rows], mapped, atol=0, rtol=0)
    # In other batches matrix products may sum in another order: float32 round-off, which the
    # head's steps carry to ~2e-5 on some CPUs.
    whole = map_noise(teacher, labels, noise, sampling)
    torch.testing.assert_close(stored, whole, atol=OTHER_BATCH_ATOL, rtol=0)
    report = verify_folder(folder, teacher=teacher, num_records=NUM_PAIRS)
    assert report.ok and report.tokens_checked == NUM_PAIRS * n, report.summary()
    # One token moved by 1e-3 (above the re-map's tolerance), the shard's hashes updated to
    # match: the re-map names that record and nothing else.
    edited = list(read_shard(folder / "shard-000001.tar"))
    edited[1]["tokens"][7, 0] += 1e-3
    rewrite_shard(folder, 1, edited)
    report = verify_folder(folder, teacher=teacher, num_records=NUM_PAIRS)
    assert not report.ok and report.problems == [], report.summary()
    assert report.records_with_mismatch == [edited[1]["index"]] and report.token_mismatches >= 1


def test_head_steps_do_not_apply_to_a_discrete_teacher():
    teacher = load_teacher(TeacherSpec(tiny="llamagen-digits"))
    with pytest.raises(ValueError, match="head_steps.*do not apply"):
        SamplingOverrides(head_steps=2).resolve(teacher.default_sampling())
    continuous = SamplingOverrides(cfg_scale=1.5, head_steps=2)
    resolved = continuous.resolve(ContinuousSamplingConfig())
    assert resolved == ContinuousSamplingConfig(cfg_scale=1.5, head_steps=2)
    with pytest.raises(ValueError, match="top_k"):
        SamplingOverrides(top_k=5).resolve(ContinuousSamplingConfig())


def test_flow_settings_are_refused_for_a_continuous_teacher(tmp_path, capsys):
    """FAR's head maps the noise itself: --flow.* was recorded in the manifest and changed
    nothing. It is refused in one line before anything is written."""
    folder = tmp_path / "pairs"
    argv = ["--recipe", str(RECIPE), "--output.folder", str(folder), "--pairs.num_pairs", "8"]
    assert generate_main([*argv, "--flow.num_steps", "3", "--run.progress_bar", "false"]) == 1
    assert "flow: ['num_steps'] do not apply to a continuous-token teacher" in (
        capsys.readouterr().err
    )
    assert not folder.exists()
