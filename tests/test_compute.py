"""Where and in what precision ``dd eval`` and ``dd sample`` compute (``dd.compute``).

No GPU here: CUDA's presence is simulated for the device rules, and the mixed precisions run
under CPU autocast, which follows the same rules of what runs in half precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dd.cli import main as dd_main
from dd.compute import compute_precision, resolve_device
from dd.evaluate import Samplers, generate, model_calls, parse_methods, teacher_forward
from dd.sampling import randomness_at, seed_base
from dd.student import DDStudent
from teachers.tiny import load_tiny_teacher, tiny_sampling

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_devices_are_resolved_or_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda': this machine has no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="runs on cpu or cuda"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_device_the_machine_lacks_is_refused_before_any_model_loads(
    command, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the device was checked")

    monkeypatch.setattr("dd.teacher_spec.load_teacher", no_loading)
    code = dd_main(
        [command, "--teacher.tiny", "var-digits", "--device", "cuda",
         "--output", str(tmp_path / "out"), "--progress_bar", "false"]
    )  # fmt: skip
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        f"dd {command}: device 'cuda': this machine has no CUDA device "
        "(torch.cuda.is_available() is False); give cpu or auto"
    )


def test_precision_names_an_autocast_or_nothing():
    layer = torch.nn.Linear(4, 4)
    cpu = torch.device("cpu")
    for precision, dtype in [
        ("32-true", torch.float32), ("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)
    ]:  # fmt: skip
        with compute_precision(cpu, precision):
            assert layer(torch.ones(2, 4)).dtype == dtype
    with pytest.raises(ValueError, match="precision must be one of"):
        compute_precision(cpu, "64-true")


@pytest.mark.parametrize("name", ["llamagen-digits", "var-digits"])
def test_mixed_precision_covers_every_model_call_but_not_decoding(name):
    teacher = load_tiny_teacher(name)
    second = teacher.geometry.num_steps // 2
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, second), teacher.geometry.step_ranges[second][0])
    seen: set[torch.dtype] = set()
    hooks = [
        module.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        for module in student.modules()  # the student holds the teacher's modules too
        if isinstance(module, torch.nn.Linear)
    ]
    labels = torch.tensor([3, 7])
    code_dim = int(teacher.codebook.shape[1])
    randomness = randomness_at(seed_base(0), range(2), teacher.geometry.num_tokens, code_dim)
    specs = ["teacher", "dd:1", "dd:2", "dd+teacher", "skip:1"]
    try:
        for precision, dtype in [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)]:
            samplers = Samplers(teacher, tiny_sampling(name), student, precision=precision)
            for method in parse_methods(specs, samplers):
                seen.clear()
                tokens = model_calls(method, samplers, labels, randomness, range(2), seed_base(0))
                assert seen == {dtype}, (precision, method.name)
                assert tokens.dtype == torch.long  # the codes are chosen exactly
            seen.clear()
            teacher_forward(teacher, 2, precision)()
            assert seen == {dtype}
            images, _ = generate(parse_methods(["dd:1"], samplers)[0], samplers, labels,
                                 seed=0, batch_size=2)  # fmt: skip
            assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--teacher.tiny", "var-digits", "--num_threads", "0"],
        ["sample", "--teacher.tiny", "var-digits", "--num_threads", "-1"],
        ["demo", "--num_threads", "0"],
        ["demo", "--workers", "0"],
        ["generate", "--recipe", str(RECIPES / "generate_tiny_var.yaml"), "--run.num_threads", "0"],
    ],
)
def test_thread_and_worker_counts_are_refused_when_the_recipe_is_read(argv, capsys):
    # torch.set_num_threads(0) was a RuntimeError traceback once work began; --workers 0 of
    # the demo killed its worker pool
    with pytest.raises(SystemExit) as info:
        dd_main([*argv, "--print_config"])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "must be >= 1" in error and "Traceback" not in error
