"""Loading the official LlamaGen files unchanged: the key map is the identity.

Accepted layouts (those LlamaGen's autoregressive/sample/sample_c2i.py loads):
``{"model": sd}`` (c2i B/L/XL, the VQ tokenizer), ``{"module": sd}`` (DeepSpeed),
``{"state_dict": sd}``, and the bare state dict of the FSDP files (XXL, 3B); ``.pt``/``.pth``
through ``torch.load(weights_only=True)``, or safetensors. The checkpoints LlamaGen's own
training scripts write (train_c2i.py, vq_train.py: ``{"model", "optimizer", "steps", "args",
...}``, ``"args"`` an ``argparse.Namespace``, allow-listed as plain data by
``teachers.checkpoint``) load by their ``"model"``.
``freqs_cis`` is not a weight and is dropped (after checking its grid size). Loading is
strict; a mismatch raises ``CheckpointError`` listing the differing keys and naming the
likely cause. Models are built on the ``meta`` device and materialised only by the load, so
a failed load leaves nothing behind and no time goes into a random init that is overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from teachers.checkpoint import (
    CheckpointError,
    build_empty,
    load_strict,
    read_state_dict,
    unwrap,
)
from teachers.llamagen.config import (
    GPT_PRESETS,
    OFFICIAL_GPT_CHECKPOINTS,
    OFFICIAL_VQ_CHECKPOINTS,
    GPTConfig,
    VQConfig,
)
from teachers.llamagen.gpt import GPT
from teachers.llamagen.teacher import LlamaGenTeacher
from teachers.llamagen.vq import VQModel

WRAPPERS = (("model",), ("module",), ("state_dict",))
PATCH_SIZE_BY_RESOLUTION = 16  # VQ-16: 256 px -> 16 tokens per side, 384 px -> 24
# Key prefixes that identify files of other kinds.
_VAR_MARKERS = (
    "blocks.",
    "class_emb.",
    "word_embed.",
    "head_nm.",
    "lvl_embed.",
    "pos_1LC",
    "pos_start",
)
_VAR_VAE_MARKERS = ("quantize.quant_resi.", "encoder.down.", "decoder.up.")
_VQ_MARKERS = ("encoder.", "decoder.", "quantize.")
_GPT_MARKERS = ("tok_embeddings.", "layers.", "cls_embedding.")
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def resolve_gpt_config(
    config: GPTConfig | str | None, checkpoint: str | Path | None = None
) -> GPTConfig:
    """A ``GPTConfig``; a preset ``"L"`` (256 px, 16x16 tokens) or ``"L-384"`` (24x24); or
    ``None`` to take the preset from an official file name such as ``c2i_L_384.pt``."""
    if isinstance(config, GPTConfig):
        return config
    if config is None:
        if checkpoint is None:
            raise ValueError("give gpt_config, or a checkpoint with an official file name")
        return GPTConfig.for_checkpoint(checkpoint)
    size, _, resolution = config.removeprefix("GPT-").partition("-")
    if resolution and not resolution.isdigit():
        raise ValueError(f"GPT preset {config!r}: expected a form like 'L' or 'L-384'")
    side = int(resolution) // PATCH_SIZE_BY_RESOLUTION if resolution else 16
    return GPTConfig.preset(size, side)


def resolve_vq_config(config: VQConfig | str | None) -> VQConfig:
    """A ``VQConfig`` or a preset name (``"VQ-16"``, the default, or ``"VQ-8"``)."""
    return config if isinstance(config, VQConfig) else VQConfig.preset(config or "VQ-16")


def _preset_name(n_layer: int, dim: int) -> str:
    for name, preset in GPT_PRESETS.items():
        if (preset.n_layer, preset.dim) == (n_layer, dim):
            return f"preset {name!r}"
    return "no official preset"


def _has_marker(keys: Mapping[str, object] | set[str], markers: tuple[str, ...]) -> bool:
    return any(key.startswith(markers) for key in keys)


def describe_gpt_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int] | None:
    """Layer count, width, vocabulary and class-table rows of a GPT state dict (None if not one)."""
    if "tok_embeddings.weight" not in state_dict:
        return None
    vocab_size, dim = state_dict["tok_embeddings.weight"].shape
    layers = [int(m.group(1)) for key in state_dict if (m := _LAYER_KEY.match(key))]
    table = state_dict.get("cls_embedding.embedding_table.weight")
    return {
        "n_layer": max(layers) + 1 if layers else 0,
        "dim": int(dim),
        "vocab_size": int(vocab_size),
        "class_rows": int(table.shape[0]) if table is not None else -1,
    }


def _gpt_cause(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> str:
    if _has_marker(state_dict, _VAR_MARKERS):
        return "this is a VAR checkpoint, not LlamaGen: load it with the VAR teacher (teachers.var)"
    # VAR's VQVAE has encoder./decoder./quantize. keys too: named before LlamaGen's tokenizer
    if _has_marker(state_dict, _VAR_VAE_MARKERS):
        return (
            "this is VAR's multi-scale VQVAE, not a LlamaGen GPT: load it with the VAR teacher "
            "(teachers.var) as its VQVAE"
        )
    if _has_marker(state_dict, _VQ_MARKERS) and not _has_marker(state_dict, _GPT_MARKERS):
        return "this is a VQ tokenizer file: pass it as the vq checkpoint, not the gpt checkpoint"
    found = describe_gpt_state_dict(state_dict)
    if found is None:
        return "the file holds no LlamaGen GPT weights (no tok_embeddings.weight)"
    causes = []
    if (found["n_layer"], found["dim"]) != (config.n_layer, config.dim):
        causes.append(
            f"wrong size preset: the checkpoint has n_layer={found['n_layer']}, dim={found['dim']} "
            f"({_preset_name(found['n_layer'], found['dim'])}); "
            f"the config has n_layer={config.n_layer}, "
            f"dim={config.dim} ({_preset_name(config.n_layer, config.dim)})"
        )
    if found["vocab_size"] != config.vocab_size:
        causes.append(f"vocab_size: checkpoint {found['vocab_size']} vs config {config.vocab_size}")
    if found["class_rows"] != config.num_class_embeddings:
        causes.append(
            f"class table: checkpoint {found['class_rows']} rows "
            f"vs config {config.num_class_embeddings} "
            f"(num_classes={config.num_classes} + null class if class_dropout_prob > 0)"
        )
    return (
        "; ".join(causes)
        or "a GPT with other options (n_head / n_kv_head / ffn sizes) than the config"
    )


def _check_official_name(path: Path, config: GPTConfig) -> None:
    """An official file name states its size and grid: refuse a config that contradicts it."""
    if path.name not in OFFICIAL_GPT_CHECKPOINTS:
        return
    size, side = OFFICIAL_GPT_CHECKPOINTS[path.name]
    preset = GPT_PRESETS[size]
    if (config.n_layer, config.dim) != (preset.n_layer, preset.dim):
        raise CheckpointError(
            f"{path.name} is the official {size} model; the config is not (wrong size preset): "
            f"use GPTConfig.preset({size!r}, {side})"
        )
    if config.grid_size != side:
        raise CheckpointError(
            f"{path.name} was trained with {side}x{side} image tokens; the config has "
            f"{config.grid_size}x{config.grid_size} (wrong grid size): "
            f"use GPTConfig.preset({size!r}, {side})"
        )


def load_gpt(
    path: str | Path, config: GPTConfig | str | None = None, *, device: torch.device | str = "cpu"
) -> GPT:
    """Build the c2i GPT of ``config`` and load an official checkpoint into it (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPT checkpoint file not found: {path}")
    config = resolve_gpt_config(config, path)
    _check_official_name(path, config)  # before reading a multi-GB file
    state_dict = unwrap(read_state_dict(path), WRAPPERS, source=str(path))
    freqs_cis = state_dict.pop("freqs_cis", None)
    if freqs_cis is not None and freqs_cis.shape[0] != config.seq_len:
        raise CheckpointError(
            f"checkpoint {path}: its freqs_cis covers {freqs_cis.shape[0]} positions, the config "
            f"{config.seq_len} (class token + {config.grid_size}x{config.grid_size}): "
            "wrong grid size"
        )
    gpt = build_empty(GPT, config, device)
    load_strict(
        gpt, state_dict, source=str(path), diagnose=lambda _m, _u: _gpt_cause(state_dict, config)
    )
    gpt.reset_buffers()
    return gpt.eval()


def _vq_cause(state_dict: Mapping[str, torch.Tensor], config: VQConfig) -> str:
    if _has_marker(state_dict, _VAR_VAE_MARKERS):
        return "this is VAR's multi-scale VQVAE, not LlamaGen's tokenizer: use the VAR teacher"
    if _has_marker(state_dict, _VAR_MARKERS):  # before the GPT's: it is not LlamaGen's at all
        return (
            "this is a VAR transformer checkpoint, not LlamaGen's tokenizer: load it with the "
            "VAR teacher (teachers.var)"
        )
    if _has_marker(state_dict, _GPT_MARKERS):
        return (
            "this is a LlamaGen GPT checkpoint, not a VQ tokenizer: pass it as the gpt checkpoint"
        )
    levels = {int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.conv_blocks.")}
    if levels and len(levels) != len(config.ch_mult):
        return (
            f"the checkpoint has {len(levels)} resolution levels, the config {len(config.ch_mult)} "
            f"(ch_mult {config.ch_mult}): VQ-16 has 5, VQ-8 has 4"
        )
    codebook = state_dict.get("quantize.embedding.weight")
    if codebook is not None and tuple(codebook.shape) != (
        config.codebook_size,
        config.codebook_embed_dim,
    ):
        expected = (config.codebook_size, config.codebook_embed_dim)
        return f"codebook {tuple(codebook.shape)} vs config {expected}"
    if "quantize.codebook_used" in state_dict and not config.codebook_show_usage:
        return "the file has quantize.codebook_used: set codebook_show_usage=True"
    return "a tokenizer with other widths (ch, z_channels, num_res_blocks) than the config"


def load_vq(
    path: str | Path, config: VQConfig | str | None = None, *, device: torch.device | str = "cpu"
) -> VQModel:
    """Build the VQ tokenizer of ``config`` (default VQ-16), load an official file (eval mode)."""
    path = Path(path)
    if config is None and path.name in OFFICIAL_VQ_CHECKPOINTS:
        config = OFFICIAL_VQ_CHECKPOINTS[path.name]
    config = resolve_vq_config(config)
    state_dict = unwrap(read_state_dict(path), WRAPPERS, source=str(path))
    vq = build_empty(VQModel, config, device)
    load_strict(
        vq, state_dict, source=str(path), diagnose=lambda _m, _u: _vq_cause(state_dict, config)
    )
    return vq.eval()


def load_llamagen_teacher(
    gpt_checkpoint: str | Path,
    vq_checkpoint: str | Path,
    *,
    gpt_config: GPTConfig | str | None = None,
    vq_config: VQConfig | str | None = None,
    device: torch.device | str = "cpu",
) -> LlamaGenTeacher:
    """The frozen teacher from the official GPT and VQ files (see docs/teachers.md)."""
    gpt = load_gpt(gpt_checkpoint, gpt_config, device=device)
    vq = load_vq(vq_checkpoint, vq_config, device=device)
    return LlamaGenTeacher(gpt, vq)
