"""Reading official checkpoint files safely and loading them strictly.

Never unpickles code: safetensors (by name or by content) through safetensors, anything else
through ``torch.load(weights_only=True)``, whose failures never pass on torch's advice to
unpickle. Wrappers (``["model"]``, ``["module"]``,
``["state_dict"]``, ``["trainer"]["var_wo_ddp"]``) are unwrapped by the caller-supplied key
paths, so each family states which wrappers it accepts.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model."""


# Classes of plain data (no code runs to rebuild them) that official training checkpoints
# pickle beside the weights: LlamaGen's train_c2i.py and vq_train.py save their command line
# as an argparse.Namespace under "args". Allow-listed for weights_only=True reads only.
PLAIN_DATA_GLOBALS = (argparse.Namespace,)


def read_state_dict(path: str | Path) -> dict[str, object]:
    """The raw mapping stored in ``path`` (safetensors or a weights-only torch file).

    A safetensors file is read as one whatever its name (a ``.pt`` that holds safetensors is
    a common mix-up, and torch's refusal of it advised unpickling with weights_only=False)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors" or is_safetensors(path):
        return _read_safetensors(path)
    loaded = _torch_load_weights_only(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte little-endian header
    length that fits in the file, then the JSON header's ``{``."""
    with path.open("rb") as file:
        head = file.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"cannot read {path} as safetensors: {error}") from error


def _torch_load_weights_only(path: Path) -> object:
    """``torch.load(weights_only=True)``; a failure is one ``CheckpointError`` naming the file.
    torch's own text is never passed on: it advises weights_only=False (running whatever code
    the file pickles) and asks to file an issue, wrong for a truncated download or a web page.
    Warnings raised by a failed load are dropped with it; those of a good load are kept."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with plain_data_globals():
                loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - re-raised with the file named
            raise CheckpointError(_load_failure(path, error)) from error
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def plain_data_globals() -> contextlib.AbstractContextManager:
    """``PLAIN_DATA_GLOBALS`` allowed for the ``weights_only=True`` loads in the block (torch
    2.4, without ``safe_globals``: allowed process-wide, harmless for plain data)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        return serialization.safe_globals(list(PLAIN_DATA_GLOBALS))
    serialization.add_safe_globals(list(PLAIN_DATA_GLOBALS))
    return contextlib.nullcontext()


def _load_failure(path: Path, error: Exception) -> str:
    """What went wrong, in one line and without torch's advice (weights_only=False): a class
    the file pickles (read fine, but never unpickled here), else a guess at what the file is
    and the first sentence of torch's message."""
    text = str(error)
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        return (
            f"{path}: it pickles {pickled.group(1)}, which is never unpickled here "
            "(weights_only=True): save the model's state_dict() (or a safetensors file) instead"
        )
    if isinstance(error, pickle.UnpicklingError):
        reason = "not torch's zip or pickle format"
    else:
        reason = (text.strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
    return (
        f"{path} is not a PyTorch checkpoint readable with weights_only=True (a truncated "
        f"download? an HTML page? another format?): {reason}"
    )


def unwrap(
    raw: Mapping[str, object], wrapper_paths: Iterable[tuple[str, ...]], *, source: str
) -> dict[str, torch.Tensor]:
    """Follow the first wrapper path present in ``raw``; a bare state dict passes through.
    Neither (no tensor at the top level): a ``CheckpointError`` naming the top-level keys."""
    wrapper_paths = tuple(wrapper_paths)
    for key_path in wrapper_paths:
        node: object = raw
        for key in key_path:
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            if isinstance(node, Mapping):
                return {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        accepted = ", ".join("/".join(path) for path in wrapper_paths) or "none"
        raise CheckpointError(
            f"{source} holds no tensors at its top level and none of the wrappers this family "
            f"reads ({accepted}); its top-level keys: {_preview(set(map(str, raw)))}"
        )
    return tensors


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    diagnose: Callable[[set[str], set[str]], str] | None = None,
) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the differences and a likely cause.

    Keys and shapes are checked before anything is copied, so a failed load leaves the
    module untouched (nothing half-loaded).
    """
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not match {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:6])}")
        if diagnose is not None:
            cause = diagnose(missing, unexpected | {m.split(":")[0] for m in mismatched})
            if cause:
                lines.append(f"  likely cause: {cause}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(dict(state_dict), strict=True)


def _preview(keys: set[str], limit: int = 8) -> str:
    shown = sorted(keys)[:limit]
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(shown) + more


def build_empty(
    factory: Callable[[object], nn.Module], config: object, device: torch.device | str
) -> nn.Module:
    """``factory(config)`` built on the ``meta`` device and given uninitialised storage on
    ``device``: no random initialisation of weights a strict load overwrites anyway (seconds
    and a second copy of the weights for a large model). Every parameter and buffer must then
    come from the checkpoint, which ``load_strict`` enforces."""
    with torch.device("meta"):
        module = factory(config)
    return module.to_empty(device=device)
