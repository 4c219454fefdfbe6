"""A teacher's fingerprint: a short sha256 of its configs and weights that names it in shards.

One helper for every family. The hash covers, in this order: the JSON of the configs (keys
sorted, dataclasses through ``dataclasses.asdict``), then for every module in the order given
and every state-dict entry of that module in sorted name order (``prefix + name``), a text
header and the raw bytes of the tensor. Entries named in ``excluded`` (training statistics
that never change an output) are skipped.

``entry_format`` is the header of one entry. It is a parameter only because the two families
recorded their shipped fingerprints (pair-shard manifests, the shipped students' cards in
``dd/weights/*/student.json``) with different field orders; each family keeps its own so that
no recorded value changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn

FINGERPRINT_CHARS = 16  # hex characters kept of the sha256 digest
# Header field orders (see the module docstring); both give 16-hex-char fingerprints.
ENTRY_NAME_DTYPE_SHAPE = "{name}:{dtype}:{shape}"  # LlamaGen
ENTRY_NAME_SHAPE_DTYPE = "{name}:{shape}:{dtype}"  # VAR


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def weights_fingerprint(
    configs: Mapping[str, object],
    modules: Sequence[tuple[str, nn.Module]],
    *,
    excluded: frozenset[str] = frozenset(),
    entry_format: str = ENTRY_NAME_DTYPE_SHAPE,
) -> str:
    """``FINGERPRINT_CHARS`` hex characters of the sha256 of ``configs`` and the weights.

    ``modules``: ``(prefix, module)`` pairs, hashed in this order; ``excluded`` holds full
    (prefixed) state-dict names.
    """
    hasher = hashlib.sha256()
    payload = {key: _jsonable(value) for key, value in configs.items()}
    hasher.update(json.dumps(payload, sort_keys=True).encode())
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            full_name = prefix + name
            if full_name in excluded:
                continue
            header = entry_format.format(
                name=full_name, dtype=tensor.dtype, shape=tuple(tensor.shape)
            )
            hasher.update(header.encode())
            flat_bytes = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            hasher.update(flat_bytes.numpy().tobytes())
    return hasher.hexdigest()[:FINGERPRINT_CHARS]
