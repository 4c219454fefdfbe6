"""Stage checkpoints of ``dd train-teacher``, so a stopped run resumes where it stopped.

A run keeps its progress in a hidden folder of ``--out``, ``.train-<entry>/``: ``run.json``
(the run's full settings, its key) and one ``<stage>.safetensors`` per finished stage, holding
the stage's trained module in full precision (``module/<name>``), torch's global RNG state
(``rng/torch``) and, as metadata, the stage's record (its losses) and the wall time so far.
Each file is written to a temporary name, synced, then renamed (``os.replace``): a crash
leaves a stage either whole or absent. A rerun of the same command loads the finished stages
instead of training them and goes on from there; the folder is removed after the install.
A folder made with other settings is refused (one line naming it), never reused or deleted.

What the later stages need is exactly this: each stage seeds its own ``torch.Generator`` (and
torch's global RNG) from ``--seed``, and the loops draw from no Python or numpy RNG, so the
module weights, the global RNG state and the record are everything a stage hands on. Within a
stage there is no checkpoint: a run stopped mid-stage retrains that stage from its start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dd.checkpoint import write_atomically

KEY_FILE = "run.json"
STAGE_SUFFIX = ".safetensors"
MODULE_PREFIX = "module/"
RNG_KEY = "rng/torch"


def progress_folder(out: Path, entry: str) -> Path:
    """The hidden folder of ``out`` that holds a run's progress."""
    return out / f".train-{entry}"


def _differences(saved: dict, key: dict) -> list[str]:
    return sorted(k for k in saved.keys() | key.keys() if saved.get(k) != key.get(k))


class RunProgress:
    """The stage checkpoints of one run (``folder`` keyed by ``key``). ``run`` trains a stage
    or, on a rerun, loads it; after the first stage this run trains, later ones are trained
    too (a stage file past it belongs to an older attempt)."""

    def __init__(self, folder: Path, key: dict) -> None:
        self.folder = folder
        self.key = key
        self.started = time.perf_counter()
        self.resuming = True  # until a stage is trained in this process
        self.elapsed_before = 0.0
        self.check_key()
        for stage in self.finished():  # wall time of the stopped run's kept work
            self.elapsed_before = max(self.elapsed_before, self._metadata(stage)["elapsed"])

    def check_key(self) -> None:
        """Refuse a folder made by a run with other settings (one line naming it)."""
        path = self.folder / KEY_FILE
        if not path.exists():
            return
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{self.folder}: unreadable progress ({error}); delete it") from error
        if saved != self.key:
            raise ValueError(
                f"{self.folder} holds a stopped run with other settings "
                f"({', '.join(_differences(saved, self.key))}): rerun that command to resume "
                "it, or delete the folder to start over"
            )

    def finished(self) -> list[str]:
        """The stages a rerun would load (those saved; in file order)."""
        if not (self.folder / KEY_FILE).exists():
            return []
        return sorted(p.name[: -len(STAGE_SUFFIX)] for p in self.folder.glob(f"*{STAGE_SUFFIX}"))

    def elapsed(self) -> float:
        """Wall seconds of the run: the stopped attempts' kept work plus this process's."""
        return self.elapsed_before + time.perf_counter() - self.started

    def run(
        self,
        stage: str,
        train: Callable[[], tuple[nn.Module, dict]],
        empty: Callable[[], nn.Module],
    ) -> tuple[nn.Module, dict]:
        """``train()``'s (module, record), saved as ``stage``; or, if saved by a stopped run of
        the same settings, ``empty()`` loaded with it (frozen, in eval mode, as ``train``
        leaves it) and torch's global RNG set back to where the stage left it."""
        path = self.folder / f"{stage}{STAGE_SUFFIX}"
        if self.resuming and path.exists():
            return self._load(path, empty())
        self.resuming = False
        module, record = train()
        self._save(path, module, record)
        return module, record

    def _save(self, path: Path, module: nn.Module, record: dict) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(exist_ok=True)
        key_path = self.folder / KEY_FILE
        if not key_path.exists():
            write_atomically(key_path, lambda p: Path(p).write_text(json.dumps(self.key, indent=1)))
        # Full precision (the shipped files are float16): the next stages must see the very
        # weights an uninterrupted run hands on. clone(): safetensors refuses shared storage.
        tensors = {MODULE_PREFIX + k: v.detach().clone() for k, v in module.state_dict().items()}
        tensors[RNG_KEY] = torch.get_rng_state()
        metadata = {"record": json.dumps(record), "elapsed": json.dumps(self.elapsed())}
        write_atomically(path, lambda p: save_file(tensors, p, metadata=metadata))

    def _metadata(self, stage: str) -> dict:
        from safetensors import safe_open

        path = self.folder / f"{stage}{STAGE_SUFFIX}"
        try:
            with safe_open(str(path), "pt") as handle:
                return {k: json.loads(v) for k, v in handle.metadata().items()}
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path}: unreadable progress ({error}); delete it") from error

    def _load(self, path: Path, module: nn.Module) -> tuple[nn.Module, dict]:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        state = {k[len(MODULE_PREFIX) :]: v for k, v in tensors.items() if k != RNG_KEY}
        module.load_state_dict(state, strict=True)
        module.eval().requires_grad_(False)
        torch.set_rng_state(tensors[RNG_KEY])  # after empty(): its init drew from the RNG
        return module, self._metadata(path.name[: -len(STAGE_SUFFIX)])["record"]


class NoProgress:
    """Stands in for ``RunProgress`` when nothing is kept (the trainers called directly)."""

    def run(self, stage, train, empty):
        return train()


NO_PROGRESS = NoProgress()
