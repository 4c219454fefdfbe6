"""Tiny teachers: shipped files load by name, trainers learn, the CLI round trip works."""

import dataclasses
import json
import signal
from pathlib import Path

import pytest
import torch

from dd.baselines import ClassTokenTable, independent_token_sampler
from dd.cli import main as dd_main
from teachers.data import load_digits_split
from teachers.protocol import Teacher
from teachers.sampling import sample_tokens
from teachers.tiny import (
    TINY_TEACHERS,
    TrainSettings,
    load_tiny_teacher,
    read_metadata,
    tiny_sampling,
)
from teachers.tiny.presets import llamagen_tiny_configs, var_tiny_configs
from teachers.tiny.registry import known_tiny_teachers

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# Few steps, small batches, no warm-up: each trainer must already lower its loss.
QUICK = TrainSettings(
    tokenizer_steps=12,
    tokenizer_batch_size=16,
    ar_steps=12,
    ar_batch_size=16,
    warmup_steps=1,
    dead_code_every=5,
    token_copies=1,
    decoder_steps=12,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits_subset():
    train = load_digits_split("train")
    return dataclasses.replace(train, images=train.images[:200], labels=train.labels[:200])


def _falls(losses, window=3):
    return sum(losses[-window:]) / window < sum(losses[:window]) / window


@pytest.mark.parametrize("name", TINY_TEACHERS)
def test_shipped_teacher_loads_and_samples(name):
    teacher = load_tiny_teacher(name)
    assert isinstance(teacher, Teacher)
    assert teacher.num_classes == 10 and teacher.null_class == 10
    entry = read_metadata()[name]
    assert entry["command"].startswith("dd train-teacher") and "seed" in entry
    labels = torch.tensor([3, 7])
    generator = torch.Generator().manual_seed(0)
    tokens = sample_tokens(teacher, labels, tiny_sampling(name), generator=generator)
    assert tokens.shape == (2, teacher.geometry.num_tokens)
    images = teacher.decode_tokens(tokens)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    embedded = teacher.decode_embeddings(teacher.codebook[tokens])
    assert torch.allclose(embedded, images, atol=1e-5)


def test_unknown_tiny_teacher_lists_known_names():
    with pytest.raises(ValueError, match="llamagen-digits.*var-digits"):
        load_tiny_teacher("gpt-cats")


def test_tiny_sampling_of_a_teacher_without_tuned_settings_points_to_its_default():
    """``tiny_sampling("far-digits")`` said "unknown tiny teacher", though ``load_tiny_teacher``
    loads it: it has no tuned settings, its own default applies."""
    assert "far-digits" in known_tiny_teachers()
    with pytest.raises(ValueError, match=r"no tuned sampling settings for 'far-digits'") as error:
        tiny_sampling("far-digits")
    assert "teacher.default_sampling()" in str(error.value) and "unknown" not in str(error.value)
    assert callable(load_tiny_teacher("far-digits").default_sampling)


def test_llamagen_trainers_lower_their_losses(digits_subset):
    from teachers.tiny.train_llamagen import encode_tokens, train_gpt, train_vq

    gpt_config, vq_config = llamagen_tiny_configs()
    vq, vq_record = train_vq(digits_subset, vq_config, QUICK, progress=False)
    assert _falls(vq_record["losses"])
    tokens = encode_tokens(vq, digits_subset.images[:64])
    _, gpt_record = train_gpt(tokens, digits_subset.labels[:64], gpt_config, QUICK, progress=False)
    assert _falls(gpt_record["losses"])


def test_decoder_refit_keeps_the_tokens_and_lowers_its_loss(digits_subset):
    from teachers.tiny.train_llamagen import encode_tokens, refit_decoder, train_vq

    _, vq_config = llamagen_tiny_configs()
    assert vq_config.has_own_decoder  # the shipped preset decodes with a refitted decoder
    vq, _ = train_vq(digits_subset, vq_config.with_encoder_shaped_decoder(), QUICK, progress=False)
    refit, record = refit_decoder(vq, vq_config, digits_subset, QUICK, progress=False)
    assert _falls(record["losses"]) and refit.config == vq_config
    images = digits_subset.images[:32]
    assert torch.equal(encode_tokens(refit, images), encode_tokens(vq, images))
    assert torch.equal(refit.codebook(), vq.codebook())
    assert (
        sum(p.numel() for p in refit.decoder.parameters())
        < sum(p.numel() for p in vq.decoder.parameters()) / 3
    )
    assert not any(p.requires_grad for p in refit.parameters())


def test_var_trainers_lower_their_losses(digits_subset):
    from teachers.tiny.train_var import (
        encode_tokens,
        teacher_forcing_inputs,
        train_var_model,
        train_vqvae,
    )

    var_config, vae_config = var_tiny_configs()
    vae, vae_record = train_vqvae(digits_subset, vae_config, QUICK, progress=False)
    assert _falls(vae_record["losses"])
    tokens = encode_tokens(vae, digits_subset.images[:32])
    inputs = teacher_forcing_inputs(vae, tokens)
    _, var_record = train_var_model(
        tokens, inputs, digits_subset.labels[:32], var_config, QUICK, progress=False
    )
    assert _falls(var_record["losses"])


def _shapes(root):
    """A tiny class-folder data set: two colours, four shades each."""
    from PIL import Image

    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), tuple(c // (i + 1) for c in colour)).save(
                root / name / f"{i}.png"
            )
    return root


# Two steps of everything: a run of a few seconds that writes a complete teacher.
MINIMAL_STEPS = ["--tokenizer-steps", "2", "--ar-steps", "2", "--ar-batch-size", "4"]
MINIMAL_STEPS += ["--no-progress"]


def _train_shapes(data, out, seed=0):
    """``dd train-teacher`` of ``llamagen-<data folder>`` with ``MINIMAL_STEPS``."""
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--data-dir", str(data)]
    assert dd_main([*argv, *MINIMAL_STEPS, "--decoder-steps", "2", "--seed", str(seed)]) == 0


@pytest.fixture(scope="module")
def own_teacher(tmp_path_factory):
    """``llamagen-shapes``, trained by ``dd train-teacher`` (seed 0) into a folder of its own:
    (the folder, the entry name)."""
    root = tmp_path_factory.mktemp("own_teacher")
    out = root / "weights"
    _train_shapes(_shapes(root / "shapes"), out)
    return out, "llamagen-shapes"


def test_a_seed_reproduces_its_files_and_the_entry_records_the_flags(own_teacher, tmp_path):
    """The same seed twice (in one process, the global RNG elsewhere in between) gives
    byte-identical files, another seed other files; the entry records the seed and settings
    the flags asked for; the weights are saved in float16 (what the shipped files hold)."""
    from safetensors import safe_open

    out, name = own_teacher
    data = out.parent / "shapes"
    torch.rand(7)  # moves the global RNG: module init must not depend on it
    _train_shapes(data, tmp_path / "again")
    _train_shapes(data, tmp_path / "other", seed=1)
    files = read_metadata(out)[name]["files"].values()
    for file in files:
        assert (tmp_path / "again" / file).read_bytes() == (out / file).read_bytes(), file
        assert (tmp_path / "other" / file).read_bytes() != (out / file).read_bytes(), file
        with safe_open(str(out / file), "pt") as handle:
            dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}
        assert dtypes <= {torch.float16, torch.int64} and torch.float16 in dtypes, file
    entry = read_metadata(tmp_path / "other")[name]
    assert entry["seed"] == 1 and "--seed 1 " in entry["command"]
    asked = {"seed": 1, "tokenizer_steps": 2, "ar_steps": 2, "ar_batch_size": 4}
    assert entry["settings"] == {**TrainSettings().to_dict(), **asked, "decoder_steps": 2}


def _dry_run_settings(argv, capsys):
    assert dd_main([*argv, "--dry-run"]) == 0
    printed, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)
    return printed["settings"]


def test_the_family_defaults_and_the_flags_reach_the_settings(tmp_path, capsys):
    """VAR trains on 32 images a batch (130 tokens each: about LlamaGen's 64 images' tokens),
    the others on 64, unless --ar-batch-size says otherwise, as --help says (it pointed to
    presets.py, which holds only the 64); every flag reaches the settings the run uses and
    records."""
    with pytest.raises(SystemExit):
        dd_main(["train-teacher", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default 64; var 32)" in printed
    assert "Resume at stage boundaries" in printed and "<out>/.train-<entry>/" in printed
    assert "a stage stopped midway is retrained from its start" in printed  # none within one
    base = ["train-teacher", "--out", str(tmp_path / "w"), "--family"]
    for family, batch in (("llamagen", 64), ("var", 32), ("far", 64)):
        assert _dry_run_settings([*base, family], capsys)["ar_batch_size"] == batch
        flags = ["--seed", "5", "--tokenizer-steps", "3", "--ar-steps", "4"]
        settings = _dry_run_settings([*base, family, *flags, "--ar-batch-size", "8"], capsys)
        assert (settings["seed"], settings["ar_batch_size"]) == (5, 8)
        assert (settings["tokenizer_steps"], settings["ar_steps"]) == (3, 4)


def test_drop_labels_drops_at_the_given_rate():
    """CFG training replaces a label by the null class with probability ``prob`` (0.1): an
    inverted comparison dropped 90% of them and the trainers' losses still fell."""
    from teachers.tiny.common import drop_labels
    from teachers.tiny.presets import CLASS_DROPOUT

    n, null = 20_000, 10
    labels = torch.arange(n) % 10
    dropped = drop_labels(labels, null, CLASS_DROPOUT, torch.Generator().manual_seed(0))
    is_null = dropped == null
    # Binomial(20000, 0.1): mean 2000, standard deviation 42.4; within 5 of them.
    assert abs(int(is_null.sum()) - n * CLASS_DROPOUT) <= 5 * (n * 0.1 * 0.9) ** 0.5
    assert torch.equal(dropped[~is_null], labels[~is_null])
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(drop_labels(labels, null, 0.0, generator), labels)
    assert (drop_labels(labels, null, 1.0, generator) == null).all()


def test_cli_trains_a_folder_teacher_that_loads_by_name(own_teacher):
    out, name = own_teacher
    entry = json.loads((out / "tiny.json").read_text())[name]
    assert "--data-dir" in entry["command"] and entry["record"]["wall_seconds"] > 0
    assert "--decoder-steps 2" in entry["command"] and "decoder" in entry["record"]
    teacher = load_tiny_teacher(name, weights_dir=out)
    assert teacher.num_classes == 2 and isinstance(teacher, Teacher)


def test_a_teacher_of_another_folder_is_named_with_tiny_dir(own_teacher, tmp_path, monkeypatch):
    """A teacher dd train-teacher wrote into its own --out could not be named in a recipe:
    ``teacher: {tiny: ...}`` looked in the shipped teachers/weights only, so dd generate,
    train, eval and sample refused it ("unknown tiny teacher"). ``tiny_dir`` names the
    folder; a student's card keeps it (absolute), so the student loads from anywhere."""
    from dd.checkpoint import load_student, read_card, save_student
    from dd.student import DDStudent
    from dd.teacher_spec import TeacherSpec, load_teacher

    out, name = own_teacher
    with pytest.raises(ValueError, match=r"unknown tiny teacher 'llamagen-shapes'.*tiny_dir"):
        TeacherSpec(tiny=name)  # the shipped folder: the error says where else to look
    with pytest.raises(ValueError, match=r"in .*; known there: \['llamagen-shapes'\]"):
        TeacherSpec(tiny="llamagen-digits", tiny_dir=str(out))
    with pytest.raises(ValueError, match="holds no tiny teacher"):
        TeacherSpec(tiny=name, tiny_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'tiny_dir' is the folder of a tiny teacher"):
        TeacherSpec(family="llamagen", checkpoint="a", tokenizer_checkpoint="b", tiny_dir="x")
    monkeypatch.chdir(out.parent)
    spec = TeacherSpec(tiny=name, tiny_dir=out.name)  # relative to the working directory
    teacher = load_teacher(spec)
    fingerprint = load_tiny_teacher(name, weights_dir=out).fingerprint()
    assert teacher.num_classes == 2 and teacher.fingerprint() == fingerprint
    student = DDStudent(teacher, (0, 20), 64)
    folder = save_student(student, tmp_path / "student", spec)
    assert read_card(folder)["teacher"] == {"tiny": name, "tiny_dir": str(out)}
    monkeypatch.chdir(tmp_path)
    assert load_student(folder).teacher.fingerprint() == fingerprint
    argv = ["generate", "--recipe", str(RECIPES / "generate_tiny_llamagen.yaml")]
    argv += ["--teacher.tiny", name, "--teacher.tiny_dir", str(out), "--pairs.num_pairs", "2"]
    argv += ["--output.shard_size", "2", "--run.batch_size", "2", "--run.progress_bar", "false"]
    assert dd_main([*argv, "--output.folder", str(tmp_path / "pairs")]) == 0
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["teacher"]["fingerprint"] == fingerprint
    # dd sample (and dd eval, the same setup) looked the teacher's data up in the shipped folder
    argv = ["sample", "--student", str(folder), "--methods", "[teacher, 'dd:1']"]
    argv += ["--labels", "[0, 1]", "--output", str(tmp_path / "samples")]
    assert dd_main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "samples" / "teacher").iterdir()) == [
        "0000_class0.png",
        "0001_class1.png",
    ]
    # The teacher alone (no student, no pairs): an UnboundLocalError of its sampling settings
    argv = ["sample", "--teacher.tiny", name, "--teacher.tiny_dir", str(out)]
    argv += ["--methods", "[teacher]", "--labels", "[1]", "--output", str(tmp_path / "alone")]
    assert dd_main(argv) == 0
    assert [p.name for p in (tmp_path / "alone" / "teacher").iterdir()] == ["0000_class1.png"]


def test_cli_refuses_counts_that_train_nothing_and_a_folder_named_digits(tmp_path, capsys):
    """A step count of 0 or less trained nothing and recorded a loss of 0 (the classifier's 0
    became its default); a --data-dir named 'digits' took the shipped files' names."""
    base = ["train-teacher", "--out", str(tmp_path / "weights"), "--dry-run"]
    for family, flag in (
        ("llamagen", "--ar-steps"),
        ("var", "--tokenizer-steps"),
        ("llamagen", "--decoder-steps"),
        ("far", "--ar-batch-size"),
        ("classifier", "--classifier-steps"),
    ):
        for value in ("0", "-5"):
            with pytest.raises(SystemExit):
                dd_main([*base, "--family", family, flag, value])
            assert f"{flag}: must be an integer >= 1, got {value}" in capsys.readouterr().err
    digits = tmp_path / "digits"
    (digits / "a").mkdir(parents=True)
    argv = ["train-teacher", "--family", "classifier", "--out", str(tmp_path / "w")]
    assert dd_main([*argv, "--data-dir", str(digits), "--no-progress"]) == 1
    assert "a folder named 'digits'" in capsys.readouterr().err
    assert not (tmp_path / "w" / "tiny.json").exists()


def test_cli_refuses_a_thread_count_below_one(tmp_path, capsys):
    """``--threads 0`` (or less) reached ``torch.set_num_threads`` and ended in a traceback."""
    base = ["train-teacher", "--family", "classifier", "--out", str(tmp_path / "w"), "--dry-run"]
    for value in ("0", "-2"):
        with pytest.raises(SystemExit):
            dd_main([*base, "--threads", value])
        assert f"--threads: must be an integer >= 1, got {value}" in capsys.readouterr().err


def test_cli_refuses_a_seed_the_trainers_cannot_use(tmp_path, capsys):
    """``--seed 18446744073709551615`` (2**64 - 1) trained the tokenizer, then ended in a
    traceback at ``seed + 2``: refused by argparse now, while the largest seed accepted trains
    (LlamaGen adds the largest offset, + 3)."""
    from teachers.tiny.common import MAX_SEED

    base = ["train-teacher", "--family", "llamagen", "--out", str(tmp_path / "w"), "--dry-run"]
    for value in (str(2**64 - 1), str(MAX_SEED + 1), "-1"):
        with pytest.raises(SystemExit):
            dd_main([*base, "--seed", value])
        err = capsys.readouterr().err
        assert err.endswith(f"--seed: must be an integer in [0, {MAX_SEED}], got {value}\n")
    _train_shapes(_shapes(tmp_path / "shapes"), tmp_path / "w", seed=MAX_SEED)
    assert read_metadata(tmp_path / "w")["llamagen-shapes"]["seed"] == MAX_SEED


def test_cli_reports_a_missing_data_folder_in_one_line(tmp_path, capsys):
    """``--data-dir /nonexistent`` ended in a Python traceback; the other dd commands print one
    line and exit non-zero."""
    missing = tmp_path / "nonexistent"
    argv = ["train-teacher", "--family", "llamagen", "--out", str(tmp_path / "w")]
    assert dd_main([*argv, "--data-dir", str(missing), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == f"dd train-teacher: image folder not found: {missing}\n"
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_flag_the_family_does_not_use(tmp_path, capsys):
    """A flag of another family (``--head`` with llamagen, ``--decoder-steps`` with var or far,
    ``--classifier-steps`` with a teacher, a teacher's steps with the classifier) was silently
    ignored, yet recorded in the entry's command as if it had been used."""
    base = ["train-teacher", "--out", str(tmp_path / "w"), "--dry-run"]
    for family, flag, value in (
        ("llamagen", "--head", "flow"),
        ("llamagen", "--head", "shortcut"),  # given at its default: still not llamagen's
        ("llamagen", "--classifier-steps", "7"),
        ("var", "--decoder-steps", "9"),
        ("far", "--decoder-steps", "9"),
        ("classifier", "--ar-steps", "5"),
        ("classifier", "--tokenizer-steps", "600"),
        ("classifier", "--ar-batch-size", "8"),
    ):
        assert dd_main([*base, "--family", family, flag, value]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"dd train-teacher: {flag} does not apply to --family {family}")
        assert err.count("\n") == 1
    # The flags a family uses are accepted and recorded.
    assert dd_main([*base, "--family", "far", "--head", "flow", "--ar-steps", "3"]) == 0
    assert "--ar-steps 3 --head flow" in capsys.readouterr().out


def test_cli_checks_out_before_training(tmp_path, capsys, monkeypatch):
    """``--out`` naming a file trained the whole run, then failed in ``FileExistsError`` at the
    first save: the run was lost."""
    import teachers.tiny.train_classifier as train_classifier

    def trained(*args, **kwargs):
        raise AssertionError("trained before --out was checked")

    monkeypatch.setattr(train_classifier, "train_classifier", trained)
    a_file = tmp_path / "afile"
    a_file.write_text("")
    argv = ["train-teacher", "--family", "classifier", "--classifier-steps", "2", "--no-progress"]
    for out in (a_file, a_file / "weights"):
        assert dd_main([*argv, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"dd train-teacher: --out {out}") and err.count("\n") == 1
    assert a_file.read_text() == ""
    # The dry run refuses what the real run would (it passed --out afile/sub), makes nothing.
    for out in (a_file, a_file / "weights", a_file / "weights" / "deeper"):
        assert dd_main([*argv, "--out", str(out), "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"dd train-teacher: --out {out}") and err.count("\n") == 1
    assert dd_main([*argv, "--out", str(tmp_path / "new" / "weights"), "--dry-run"]) == 0
    assert not (tmp_path / "new").exists()


def test_a_broken_tiny_json_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """A folder named tiny.json in --out trained the whole run, then failed writing it
    (IsADirectoryError traceback); '{bad' said "Expecting property name ..." without naming
    the file; '[]' ended in an AttributeError traceback. Each is one line naming the file,
    before training; loading from such a folder names it too."""
    import teachers.tiny.train_classifier as train_classifier

    def trained(*args, **kwargs):
        raise AssertionError("trained before tiny.json was read")

    monkeypatch.setattr(train_classifier, "train_classifier", trained)
    argv = ["train-teacher", "--family", "classifier", "--classifier-steps", "2", "--no-progress"]
    for index, (content, why) in enumerate(
        (
            (None, " is not a file"),
            ("{bad", " is not valid JSON: Expecting property name"),
            ("[]", " holds a JSON list, not an object of entries"),
            ('{"far-x": 1}', ": entry 'far-x' is not a JSON object"),
        )
    ):
        out = tmp_path / f"w{index}"
        out.mkdir()
        path = out / "tiny.json"
        path.mkdir() if content is None else path.write_text(content)
        assert dd_main([*argv, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"dd train-teacher: {path}{why}") and err.count("\n") == 1
        with pytest.raises(ValueError, match=str(path)):
            load_tiny_teacher("far-x", weights_dir=out)


def _class_folders(root, classes=("a", "b")):
    """A tiny class-folder data set: one 16x16 PNG per class."""
    from PIL import Image

    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (90 * index, 40, 0)).save(root / name / "0.png")
    return root


def _untrained_llamagen(train, gpt_config, vq_config, settings, **kwargs):
    """Stands in for ``train_llamagen``: these tests are about names and files, not training."""
    from teachers.llamagen import GPT, VQModel

    return GPT(gpt_config), VQModel(vq_config), {}


def _untrained_var(train, var_config, vae_config, settings, **kwargs):
    from teachers.var import VAR, VQVAE

    return VAR(var_config), VQVAE(vae_config), {}


def _untrained_far(train, far_config, ae_config, settings, shortcut, **kwargs):
    from teachers.far.autoencoder import Autoencoder
    from teachers.far.model import FARCausal

    return FARCausal(far_config), Autoencoder(ae_config), {}


def test_an_entry_records_the_settings_its_family_uses(tmp_path, capsys, monkeypatch):
    """VAR and FAR entries recorded ``decoder_steps``, a LlamaGen-only setting the CLI refuses
    for them (the shipped VAR and FAR entries do not have it). Every family's entry records the
    settings the shipped entry of that family records, and the dry run prints them."""
    import teachers.tiny.train_far as train_far
    import teachers.tiny.train_llamagen as train_llamagen
    import teachers.tiny.train_var as train_var

    monkeypatch.setattr(train_llamagen, "train_llamagen", _untrained_llamagen)
    monkeypatch.setattr(train_var, "train_var", _untrained_var)
    monkeypatch.setattr(train_far, "train_far", _untrained_far)
    data, out = _class_folders(tmp_path / "mine"), tmp_path / "weights"
    shipped = read_metadata()
    for family in ("llamagen", "var", "far"):
        argv = ["train-teacher", "--family", family, "--out", str(out), "--data-dir", str(data)]
        assert dd_main([*argv, "--no-progress"]) == 0
        recorded = read_metadata(out)[f"{family}-mine"]["settings"]
        assert list(recorded) == list(shipped[f"{family}-digits"]["settings"]), family
        assert _dry_run_settings(argv, capsys) == recorded, family


def test_cli_names_map_to_their_own_files(tmp_path, capsys, monkeypatch):
    """Folders ``my-set`` and ``my_set`` gave two entries sharing (overwriting) the files
    ``llamagen_my_set_*``. Re-training an entry from the same data still replaces it."""
    import teachers.tiny.train_llamagen as train_llamagen

    monkeypatch.setattr(train_llamagen, "train_llamagen", _untrained_llamagen)
    out = tmp_path / "weights"
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--no-progress"]
    _class_folders(tmp_path / "my-set")
    _class_folders(tmp_path / "my_set", classes=("a", "b", "c"))
    for folder in ("my-set", "my_set", "my-set"):  # the last: the same entry, re-trained
        assert dd_main([*argv, "--data-dir", str(tmp_path / folder)]) == 0
    metadata = read_metadata(out)
    files = [f for entry in metadata.values() for f in entry["files"].values()]
    assert len(set(files)) == len(files) == 4 and all((out / f).is_file() for f in files)
    assert sorted(metadata) == ["llamagen-my-set", "llamagen-my_set"]
    assert metadata["llamagen-my-set"]["files"]["gpt"] == "llamagen_my_set_gpt.safetensors"
    assert load_tiny_teacher("llamagen-my-set", weights_dir=out).num_classes == 2
    assert load_tiny_teacher("llamagen-my_set", weights_dir=out).num_classes == 3


def _listing(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_interrupted_retrain_leaves_the_old_teacher_whole(tmp_path, monkeypatch):
    """The weight files were saved straight into --out one after another, the entry last: a
    re-train killed after the first file left the new GPT beside the old VQ under the old
    entry, and that mix loaded without a word. Now nothing of the run is in place until all
    its files are written (staging folder, then renames), and an interruption between the
    renames leaves no entry rather than a mixed one."""
    import teachers.tiny.cli as cli
    import teachers.tiny.train_llamagen as train_llamagen

    monkeypatch.setattr(train_llamagen, "train_llamagen", _untrained_llamagen)
    out = tmp_path / "weights"
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--no-progress"]
    argv += ["--data-dir", str(_class_folders(tmp_path / "mine"))]
    assert dd_main(argv) == 0
    before = _listing(out)
    fingerprint = load_tiny_teacher("llamagen-mine", weights_dir=out).fingerprint()
    saved = []

    def save_then_die(module, path, **kwargs):
        if saved:
            raise KeyboardInterrupt  # killed while saving the second file
        saved.append(path)
        return cli_save(module, path, **kwargs)

    cli_save = cli.save_weights
    monkeypatch.setattr(cli, "save_weights", save_then_die)
    assert dd_main([*argv, "--seed", "1"]) == 128 + signal.SIGINT  # dd.cli: one line for Ctrl-C
    assert saved and _listing(out) == before  # the old files and entry, nothing new
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging folder left
    assert load_tiny_teacher("llamagen-mine", weights_dir=out).fingerprint() == fingerprint
    monkeypatch.setattr(cli, "save_weights", cli_save)
    replace = cli.os.replace
    renamed = []

    def rename_then_die(source, target):
        if renamed:
            raise KeyboardInterrupt  # killed between the renames
        renamed.append(target)
        replace(source, target)

    monkeypatch.setattr(cli.os, "replace", rename_then_die)
    assert dd_main([*argv, "--seed", "1"]) == 128 + signal.SIGINT
    monkeypatch.setattr(cli.os, "replace", replace)
    assert renamed and _listing(out)[renamed[0].name] != before[renamed[0].name]
    with pytest.raises(ValueError, match="unknown tiny teacher 'llamagen-mine'"):
        load_tiny_teacher("llamagen-mine", weights_dir=out)


def test_files_of_another_run_under_an_entry_are_refused(tmp_path, monkeypatch):
    """An entry records the sha256 of its files; a file another run wrote under it (two runs
    into one --out, a copy) is refused in one line naming the file and the command. The
    shipped entries (written before) record none and load as before."""
    import shutil

    import teachers.tiny.train_classifier as train_classifier
    import teachers.tiny.train_llamagen as train_llamagen
    from dd.metrics.digits import ClassifierConfig, DigitsClassifier, load_classifier

    monkeypatch.setattr(train_llamagen, "train_llamagen", _untrained_llamagen)
    monkeypatch.setattr(
        train_classifier,
        "train_classifier",
        lambda train, **kwargs: (DigitsClassifier(ClassifierConfig(num_classes=2)), [0.0]),
    )
    data = _class_folders(tmp_path / "mine")
    outs = {seed: tmp_path / f"weights{seed}" for seed in (0, 1)}
    for family in ("llamagen", "classifier"):
        for seed, out in outs.items():
            argv = ["train-teacher", "--family", family, "--out", str(out), "--data-dir", str(data)]
            assert dd_main([*argv, "--seed", str(seed), "--no-progress"]) == 0
    entry = read_metadata(outs[0])["llamagen-mine"]
    assert set(entry["sha256"]) == {"gpt", "vq"}
    load_tiny_teacher("llamagen-mine", weights_dir=outs[0])
    gpt = entry["files"]["gpt"]
    shutil.copy(outs[1] / gpt, outs[0] / gpt)  # the other run's GPT beside this run's VQ
    with pytest.raises(ValueError) as error:
        load_tiny_teacher("llamagen-mine", weights_dir=outs[0])
    message = str(error.value)
    assert message.startswith(f"{outs[0] / gpt} is not the file it records") and "\n" not in message
    assert message.endswith(f"re-run its command: {entry['command']}")
    classifier = outs[0] / "classifier-mine.safetensors"
    load_classifier(classifier)
    shutil.copy(outs[1] / classifier.name, classifier)
    with pytest.raises(ValueError, match="classifier-mine.safetensors is not the file"):
        load_classifier(classifier)
    assert all("sha256" not in entry for entry in read_metadata().values())


def test_cli_names_the_entry_after_the_resolved_folder(tmp_path, capsys, monkeypatch):
    """``--data-dir .`` named the entry ``llamagen-`` (files ``llamagen__gpt.safetensors``);
    ``--data-dir /`` has no name at all."""
    import teachers.tiny.train_llamagen as train_llamagen

    monkeypatch.setattr(train_llamagen, "train_llamagen", _untrained_llamagen)
    out = tmp_path / "weights"
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--no-progress"]
    monkeypatch.chdir(_class_folders(tmp_path / "mine"))
    assert dd_main([*argv, "--data-dir", "."]) == 0
    metadata = read_metadata(out)
    assert list(metadata) == ["llamagen-mine"] and metadata["llamagen-mine"]["data"] == "mine"
    assert metadata["llamagen-mine"]["files"]["gpt"] == "llamagen_mine_gpt.safetensors"
    capsys.readouterr()
    assert dd_main([*argv, "--data-dir", "/"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dd train-teacher: --data-dir /: the folder has no name")
    assert read_metadata(out) == metadata


def test_cli_refuses_a_name_or_file_of_another_entry_before_training(tmp_path, capsys, monkeypatch):
    """``--family far --data-dir .../digits-flow`` into a copy of the shipped weights replaced
    the shipped ``far-digits-flow`` (flow head, the digits) by a shortcut-head teacher of that
    folder, which then loaded under the shipped name without a warning."""
    import shutil

    import teachers.tiny.train_far as train_far
    import teachers.tiny.train_llamagen as train_llamagen
    from teachers.shipped import METADATA_FILE, WEIGHTS_DIR

    def trained(*args, **kwargs):
        raise AssertionError("trained before the names were checked")

    monkeypatch.setattr(train_far, "train_far", trained)
    monkeypatch.setattr(train_llamagen, "train_llamagen", trained)
    out = tmp_path / "weights"
    out.mkdir()
    shutil.copy(WEIGHTS_DIR / METADATA_FILE, out / METADATA_FILE)  # the entries, no weights
    shipped = (out / METADATA_FILE).read_text()
    data = _class_folders(tmp_path / "digits-flow")
    argv = ["train-teacher", "--family", "far", "--out", str(out), "--data-dir", str(data)]
    assert dd_main([*argv, "--ar-steps", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dd train-teacher: --out {out} already holds 'far-digits-flow' ")
    assert "(family far, data 'digits', head flow)" in err
    assert "rename the data folder or use another --out" in err and err.count("\n") == 1
    # A file of another entry (e.g. one written before names mapped to files one to one).
    entry = {"family": "llamagen", "data": "x", "files": {"gpt": "llamagen_shapes_gpt.safetensors"}}
    (out / METADATA_FILE).write_text(json.dumps({"llamagen-x": entry}))
    data = _class_folders(tmp_path / "shapes")
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--data-dir", str(data)]
    assert dd_main([*argv, "--ar-steps", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "llamagen_shapes_gpt.safetensors belongs to the entry 'llamagen-x'" in err
    assert shipped == (WEIGHTS_DIR / METADATA_FILE).read_text()


def test_the_dry_run_reads_the_data_and_prints_what_the_family_uses(tmp_path, capsys):
    """``--dry-run`` passed a missing --data-dir and printed the digits' 10 classes, and for
    the classifier the AR settings it ignores."""
    from PIL import Image

    base = ["train-teacher", "--out", str(tmp_path / "weights"), "--dry-run"]
    assert dd_main([*base, "--family", "var", "--data-dir", str(tmp_path / "missing")]) == 1
    assert "image folder not found" in capsys.readouterr().err
    data = tmp_path / "shapes"
    for name in ("a", "b", "c"):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (9, 9, 9)).save(data / name / "0.png")
    capsys.readouterr()
    assert dd_main([*base, "--family", "var", "--data-dir", str(data)]) == 0
    printed = capsys.readouterr().out
    assert '"num_classes": 3' in printed and "num_classes=3" in printed
    assert '"entry": "var-shapes"' in printed and "var_shapes_vae.safetensors" in printed
    assert dd_main([*base, "--family", "classifier", "--classifier-steps", "7"]) == 0
    printed = capsys.readouterr().out
    assert '"classifier_steps": 7' in printed and "ar_steps" not in printed
    assert not (tmp_path / "weights").exists()


def test_independent_token_sampler_follows_frequencies():
    tokens = torch.tensor([[0, 1], [0, 2], [3, 3]])
    labels = torch.tensor([0, 0, 1])
    table = ClassTokenTable.of(tokens, labels, num_classes=2, vocab_size=4)
    freq = table.frequencies(0)
    assert freq[0].tolist() == [1, 0, 0, 0] and freq[1].tolist() == [0, 0.5, 0.5, 0]
    drawn = independent_token_sampler(table, torch.tensor([0] * 200 + [1]), seed=0)
    assert (drawn[:200, 0] == 0).all() and set(drawn[:200, 1].tolist()) == {1, 2}
    assert drawn[200].tolist() == [3, 3]


def test_two_writers_of_one_tiny_json_keep_both_entries(tmp_path, monkeypatch):
    """Two runs finishing together in one --out: each reads tiny.json, adds its entry and
    replaces the file. Without the lock the second replace dropped the first entry; the
    barrier makes both reads happen first whenever nothing keeps them apart."""
    import threading

    from teachers import shipped

    both_read = threading.Barrier(2, timeout=2)
    read = shipped.read_metadata

    def read_together(weights_dir=None):
        metadata = read(weights_dir)
        try:
            both_read.wait()  # with the lock, the other writer cannot get here: it times out
        except threading.BrokenBarrierError:
            pass
        return metadata

    monkeypatch.setattr(shipped, "read_metadata", read_together)
    writers = [
        threading.Thread(target=shipped.write_metadata_entry, args=(name, {"n": i}, tmp_path))
        for i, name in enumerate(("far-a", "far-b"))
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    monkeypatch.undo()
    assert shipped.read_metadata(tmp_path) == {"far-a": {"n": 0}, "far-b": {"n": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.json.lock", "tiny.json"]


# sha256 of the files of minimal runs (``_train_shapes`` / ``_train_var_shapes``, seed 0, one
# thread), written by the code before resume existed (commit 37f4001, torch 2.x on x86_64 CPU):
# keeping stage checkpoints must not change one byte an uninterrupted run writes.
def _sha256s(out):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.safetensors")}


def _trained_record(out, name):
    """An entry's record without what differs between two runs of one command."""
    record = read_metadata(out)[name]["record"]
    return {k: v for k, v in record.items() if k not in ("wall_seconds", "peak_rss_mb")}


def _stop_in(monkeypatch, module, function):
    """Make ``module.function`` raise KeyboardInterrupt (Ctrl-C) when called."""

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, function, stop)


def _counting(monkeypatch, module, function, calls):
    """Wrap ``module.function`` to append its name to ``calls`` when called."""
    original = getattr(module, function)

    def counted(*args, **kwargs):
        calls.append(function)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, counted)
    return calls


STOPPED = 128 + signal.SIGINT  # dd.cli's exit code for Ctrl-C


def _without_progress(monkeypatch):
    """``dd train-teacher`` as before resume: no stage kept (the trainers get ``NO_PROGRESS``,
    their default), so the files of the code before resume on this machine."""
    import teachers.tiny.cli as cli

    monkeypatch.setattr(cli, "_open_progress", lambda *args: None)


def test_keeping_progress_changes_no_file(own_teacher, tmp_path, monkeypatch):
    """An uninterrupted run that keeps its stages writes the files of a run that keeps none
    (the code before resume), so the shipped teachers stay reproducible by their commands; the
    progress folder is removed on success. (Compared on this machine: another CPU's float
    round-off gives other bytes, so no hash is pinned.)"""
    out, name = own_teacher
    assert not [p for p in out.iterdir() if p.name.startswith(".train-")]  # removed on success
    _without_progress(monkeypatch)
    _train_shapes(out.parent / "shapes", tmp_path / "before")
    assert _sha256s(tmp_path / "before") == _sha256s(out)
    assert _trained_record(tmp_path / "before", name) == _trained_record(out, name)


def test_a_stopped_llamagen_run_resumes_after_its_finished_stages(
    own_teacher, tmp_path, capsys, monkeypatch
):
    """A run stopped in the GPT stage, then in the decoder refit, then rerun: each rerun loads
    the stages finished before (their trainers are not called again) and the end result is
    byte for byte the uninterrupted run's, with the same recorded losses. Before, every rerun
    started over."""
    import teachers.tiny.train_llamagen as llamagen

    whole, name = own_teacher
    out = tmp_path / "weights"
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--data-dir"]
    argv += [str(whole.parent / "shapes"), *MINIMAL_STEPS, "--decoder-steps", "2", "--seed", "0"]
    progress = out / f".train-{name}"
    with monkeypatch.context() as patch:
        _stop_in(patch, llamagen, "train_gpt")
        assert dd_main(argv) == STOPPED
    assert sorted(p.name for p in progress.glob("*.safetensors")) == ["1-tokenizer.safetensors"]
    assert not (out / "tiny.json").exists() or name not in read_metadata(out)
    capsys.readouterr()
    assert dd_main([*argv, "--dry-run"]) == 0
    assert f'"resume": "yes: from {progress}, after 1-tokenizer"' in capsys.readouterr().out
    with monkeypatch.context() as patch:
        vq_calls = []
        _counting(patch, llamagen, "train_vq", vq_calls)
        _stop_in(patch, llamagen, "refit_decoder")
        assert dd_main(argv) == STOPPED
    assert vq_calls == []  # the tokenizer came from the progress folder
    assert len(list(progress.glob("*.safetensors"))) == 2
    with monkeypatch.context() as patch:
        calls = []
        for function in ("train_vq", "train_gpt", "refit_decoder"):
            _counting(patch, llamagen, function, calls)
        assert dd_main(argv) == 0
    assert calls == ["refit_decoder"]
    assert _sha256s(out) == _sha256s(whole)
    assert _trained_record(out, name) == _trained_record(whole, name)
    assert not progress.exists()  # removed after the install


def test_a_rerun_with_other_settings_does_not_reuse_the_progress(own_teacher, tmp_path, capsys):
    """The progress folder is keyed by every setting: another seed (or step count) is refused
    in one line naming the folder, which is left as it was; the dry run says so too."""
    import teachers.tiny.train_llamagen as llamagen

    whole, name = own_teacher
    out = tmp_path / "weights"
    argv = ["train-teacher", "--family", "llamagen", "--out", str(out), "--data-dir"]
    argv += [str(whole.parent / "shapes"), *MINIMAL_STEPS, "--decoder-steps", "2"]
    with pytest.MonkeyPatch.context() as patch:
        _stop_in(patch, llamagen, "train_gpt")
        assert dd_main([*argv, "--seed", "0"]) == STOPPED
    progress = out / f".train-{name}"
    kept = _sha256s(progress)
    capsys.readouterr()
    for other in (["--seed", "1"], ["--seed", "0", "--ar-steps", "3"]):
        for dry in ([], ["--dry-run"]):
            assert dd_main([*argv, *other, *dry]) == 1
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and f"{progress} holds a stopped run with other" in err
    assert _sha256s(progress) == kept and name not in read_metadata(out)


def _train_var_shapes(data, out):
    argv = ["train-teacher", "--family", "var", "--out", str(out), "--data-dir", str(data)]
    return dd_main([*argv, *MINIMAL_STEPS, "--seed", "0"])


def test_a_stopped_var_run_resumes_after_its_tokenizer(own_teacher, tmp_path, monkeypatch):
    """VAR stopped in its transformer stage: the rerun does not retrain the VQVAE and writes
    the files of an uninterrupted run (which are those of the code before resume)."""
    import teachers.tiny.train_var as var

    data = own_teacher[0].parent / "shapes"
    assert _train_var_shapes(data, tmp_path / "whole") == 0
    whole = _sha256s(tmp_path / "whole")
    with monkeypatch.context() as patch:
        _without_progress(patch)
        assert _train_var_shapes(data, tmp_path / "before") == 0
    assert _sha256s(tmp_path / "before") == whole  # keeping progress changes no file
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        _stop_in(patch, var, "train_var_model")
        assert _train_var_shapes(data, out) == STOPPED
    assert (out / ".train-var-shapes" / "1-tokenizer.safetensors").exists()
    calls = []
    for function in ("train_vqvae", "train_var_model"):
        _counting(monkeypatch, var, function, calls)
    assert _train_var_shapes(data, out) == 0
    assert calls == ["train_var_model"]
    assert _sha256s(out) == whole
    record = _trained_record(out, "var-shapes")
    assert record == _trained_record(tmp_path / "whole", "var-shapes")
    assert not (out / ".train-var-shapes").exists()


def test_a_stopped_far_run_resumes_after_its_autoencoder(own_teacher, tmp_path, monkeypatch):
    """FAR (flow head) stopped in its model stage: the rerun does not retrain the autoencoder
    (whose latent statistics are buffers, so they are kept too) and writes the files and
    losses of an uninterrupted run."""
    import teachers.tiny.train_far as far

    argv = ["train-teacher", "--family", "far", "--head", "flow", *MINIMAL_STEPS, "--seed", "0"]
    argv += ["--data-dir", str(own_teacher[0].parent / "shapes"), "--out"]
    assert dd_main([*argv, str(tmp_path / "whole")]) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        _stop_in(patch, far, "train_far_model")
        assert dd_main([*argv, str(out)]) == STOPPED
    calls = []
    for function in ("train_autoencoder", "train_far_model"):
        _counting(monkeypatch, far, function, calls)
    assert dd_main([*argv, str(out)]) == 0
    assert calls == ["train_far_model"]
    assert _sha256s(out) == _sha256s(tmp_path / "whole")
    name = "far-shapes-flow"
    assert _trained_record(out, name) == _trained_record(tmp_path / "whole", name)
    assert not (out / f".train-{name}").exists()
