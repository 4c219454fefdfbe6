"""What ``dd train``'s EMA holds and does to the teacher: ``dd.ema.FrozenSharingEMA`` against
Lightning's ``EMAWeightAveraging`` (``use_buffers=False``, as ``dd train`` used it).

    python3 benchmarks/bench_ema.py --teachers var-d16 llamagen-B var-digits llamagen-digits
    python3 benchmarks/bench_ema.py --drift-steps 20 --decay 0.99

Memory: for each teacher (``llamagen-B`` / ``var-d16``: the official shapes with random
weights, as ``bench_student.py`` builds them; the perceptual term is the digits features, a
function, so only the teacher is frozen here), the bytes of the tensors the averaged copy holds
that the live ``DistillModule`` does not (exact), and the growth of the process' resident memory
over the callback's ``setup`` (each case in a fresh process, so one case's freed pages do not
serve the next).

Drift: a ``--drift-steps`` run of ``dd train``'s Trainer on llamagen-digits (80 pairs, batch 8)
with each callback from the same seed: the teacher elements that differ from the loaded
teacher after ``fit``, and the largest difference between the two runs' students.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_student import SHAPES, build_teacher
from lightning.pytorch.callbacks import EMAWeightAveraging

from dd.distill import DistillModule, OptimSettings
from dd.ema import FrozenSharingEMA
from dd.losses import LossSettings
from dd.metrics.digits import feature_distance
from dd.student import DDStudent

CALLBACKS = {
    "lightning": lambda decay: EMAWeightAveraging(decay=decay, use_buffers=False),
    "dd": lambda decay: FrozenSharingEMA(decay=decay),
}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def storages(module: torch.nn.Module) -> dict[int, int]:
    tensors = [*module.parameters(), *module.buffers()]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def build_module(name: str, seed: int = 0) -> DistillModule:
    teacher = build_teacher(name)
    timesteps, split = SHAPES.get(name, ((0, teacher.geometry.num_steps // 3), None))
    if split is None:
        split = teacher.geometry.step_ranges[timesteps[1]][0]
    torch.manual_seed(seed)
    student = DDStudent(teacher, timesteps, split)
    loss = LossSettings(perceptual="digits")
    return DistillModule(student, feature_distance, OptimSettings(), loss, 8)


def one_case(name: str, kind: str) -> dict:
    module = build_module(name)
    callback = CALLBACKS[kind](0.999)
    before = resident_bytes()
    callback.setup(None, module, "fit")
    grown = resident_bytes() - before
    live, averaged = storages(module), storages(callback._average_model.module)
    own = sum(nbytes for ptr, nbytes in averaged.items() if ptr not in live)
    teacher_bytes = sum(storages(module.student.teacher).values())
    return {"copy_own_bytes": own, "rss_growth_bytes": grown, "teacher_bytes": teacher_bytes}


def memory(names: list[str]) -> None:
    print("teacher          callback   averaged copy's own MB   RSS growth MB   teacher MB")
    for name in names:
        for kind in CALLBACKS:
            command = [sys.executable, __file__, "--one", name, kind]
            result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
            mb = {key: value / 1e6 for key, value in result.items()}
            print(
                f"{name:16} {kind:10} {mb['copy_own_bytes']:22.1f} "
                f"{mb['rss_growth_bytes']:15.1f} {mb['teacher_bytes']:12.1f}"
            )


def drift(steps: int, decay: float) -> None:
    """The drift runs in a temporary folder (pairs, both Trainer runs), removed at the end."""
    with tempfile.TemporaryDirectory(prefix="bench_ema_") as scratch:
        drift_in(Path(scratch), steps, decay)


def drift_in(root: Path, steps: int, decay: float) -> None:
    from data_gen.config import (
        GenerateRecipe,
        OutputSettings,
        PairSettings,
        RunSettings,
        SamplingOverrides,
    )
    from data_gen.engine import run_generation
    from dd.data import load_pairs, split_heldout
    from dd.distill import PairDataModule
    from dd.teacher_spec import TeacherSpec, load_teacher
    from dd.train_command import make_trainer
    from dd.train_recipe import RunSection
    from teachers.tiny import tiny_sampling

    name = "llamagen-digits"
    recipe = GenerateRecipe(
        teacher=TeacherSpec(tiny=name),
        sampling=SamplingOverrides(**dataclasses.asdict(tiny_sampling(name))),
        pairs=PairSettings(num_pairs=80, seed=0),
        output=OutputSettings(folder=str(root / "pairs"), shard_size=40),
        run=RunSettings(batch_size=40, accelerator="cpu", devices=1, progress_bar=False),
    )
    run_generation(recipe)
    run = RunSection(
        global_batch_size=8, max_steps=steps, ema_decay=decay, accelerator="cpu",
        val_every_steps=10**6, checkpoint_every_steps=10**6, progress_bar=False,
    )  # fmt: skip
    students = {}
    for kind, make in CALLBACKS.items():
        teacher = load_teacher(TeacherSpec(tiny=name))
        loaded = {key: value.clone() for key, value in teacher.state_dict().items()}
        pairs = load_pairs(root / "pairs", teacher_fingerprint=teacher.fingerprint())
        train, heldout = split_heldout(pairs, 16)
        torch.manual_seed(0)
        student = DDStudent(teacher, (0, 20), 20)
        optim = OptimSettings(lr=1e-3, lr_reference_batch=0)
        module = DistillModule(student, feature_distance, optim, LossSettings("digits"), 8)
        trainer = make_trainer(run, root / kind)
        trainer.callbacks = [make(decay) if isinstance(c, FrozenSharingEMA) else c
                             for c in trainer.callbacks]  # fmt: skip
        data = PairDataModule(train, heldout, global_batch_size=8, num_timesteps=2, seed=0)
        trainer.fit(module, datamodule=data)
        now = teacher.state_dict()
        changed = sum(int((loaded[k] != now[k]).sum()) for k in loaded)
        largest = max(float((loaded[k] - now[k]).abs().max()) for k in loaded)
        total = sum(value.numel() for value in loaded.values())
        print(f"{kind:10} teacher elements changed by fit: {changed} of {total}, max {largest:.2g}")
        students[kind] = student.student_state_dict()
    difference = max(
        float((students["dd"][k] - students["lightning"][k]).abs().max()) for k in students["dd"]
    )
    print(f"largest difference between the two students: {difference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", nargs="+", default=["var-digits", "llamagen-digits"])
    parser.add_argument("--drift-steps", type=int, default=20)
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("TEACHER", "CALLBACK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_case(*args.one)))
        return
    memory(args.teachers)
    if args.drift_steps > 0:
        drift(args.drift_steps, args.decay)


if __name__ == "__main__":
    main()
