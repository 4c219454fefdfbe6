"""Loading the official VAR and VQVAE checkpoint files, unchanged.

Accepted layouts: a bare state dict (``var_d16.pth``, ``vae_ch160v4096z32.pth``, or a
``.safetensors`` file with the official key names) and VAR training checkpoints
(``["trainer"]["var_wo_ddp"]`` / ``["trainer"]["vae_local"]``). Files are read with
``weights_only=True``; loading is strict and checked before any copy, so a mismatch raises a
:class:`teachers.checkpoint.CheckpointError` naming the keys and the likely cause and leaves
nothing half-loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from teachers.checkpoint import build_empty, load_strict, read_state_dict, unwrap
from teachers.var.config import VAR_PRESETS, VARConfig, VQVAEConfig
from teachers.var.model import VAR
from teachers.var.teacher import VARTeacher
from teachers.var.vqvae import VQVAE

VAR_WRAPPERS = (("trainer", "var_wo_ddp"),)
VQVAE_WRAPPERS = (("trainer", "vae_local"),)
_COMPILED_PREFIX = "_orig_mod."  # keys of a torch.compile'd module
_EMA_HITS_KEY = "quantize.ema_vocab_hit_SV"


def _strip_compiled_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(_COMPILED_PREFIX): v for k, v in state.items()}


_LLAMAGEN_GPT_MARKERS = ("layers.", "tok_embeddings.", "cls_embedding.")
_LLAMAGEN_VQ_MARKERS = ("encoder.conv_blocks.", "decoder.conv_blocks.")


def llamagen_kind(keys: set[str]) -> str | None:
    """Which LlamaGen file ``keys`` come from, as the messages name it; ``None``: not one.
    The GPT's markers first: its keys never look like a tokenizer's."""
    if any(k.startswith(_LLAMAGEN_GPT_MARKERS) for k in keys):
        return "a LlamaGen GPT (layers.*, tok_embeddings.*)"
    if any(k.startswith(_LLAMAGEN_VQ_MARKERS) for k in keys):
        return "a LlamaGen tokenizer (conv_blocks.*)"
    return None


def depth_remedy(depth: int) -> str:
    """A preset only where one exists (d16 .. d30): 'd2' was suggested for the fixtures."""
    if f"d{depth}" in VAR_PRESETS:
        return f"use VARConfig.preset('d{depth}')"
    return (
        f"no preset has depth {depth}: build the config with VARConfig.from_official_args("
        f"{{'depth': {depth}, ...}}) (the official VAR(...) arguments; recipe: "
        "teacher.official_args)"
    )


def diagnose_var(state: dict[str, torch.Tensor], config: VARConfig):
    """A ``diagnose(missing, unexpected)`` callback for :func:`load_strict`."""

    def diagnose(missing: set[str], unexpected: set[str]) -> str:
        keys = set(state)
        if kind := llamagen_kind(keys):
            return f"this looks like {kind}, not VAR's transformer"
        if not any(k.startswith("blocks.") for k in keys):
            return "no VAR transformer keys (blocks.*): wrong file (a VQVAE tokenizer?)"
        depth = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("blocks."))
        if depth != config.depth:
            return f"checkpoint has depth {depth} but the config has depth {config.depth}: " + (
                depth_remedy(depth)
            )
        if any(k.endswith("attn.scale_mul_1H11") for k in missing):
            return "old checkpoint without L2-normalised attention: build with attn_l2_norm=False"
        if any(k.endswith("attn.scale_mul_1H11") for k in unexpected):
            return "checkpoint uses L2-normalised attention: build with attn_l2_norm=True"
        if any(".ada_gss" in k or k.startswith("shared_ada_lin") for k in missing | unexpected):
            return "shared_aln differs between checkpoint and config"
        if (
            "class_emb.weight" in state
            and state["class_emb.weight"].shape[0] != config.num_classes + 1
        ):
            classes = state["class_emb.weight"].shape[0] - 1
            return f"checkpoint has {classes} classes, config {config.num_classes}"
        if "head.weight" in state and tuple(state["head.weight"].shape) != (
            config.vocab_size,
            config.embed_dim,
        ):
            head = tuple(state["head.weight"].shape)
            return f"head is {head}: vocab size or width differ from the config"
        if "pos_1LC" in state and state["pos_1LC"].shape[1] != config.num_tokens:
            return (
                f"checkpoint has {state['pos_1LC'].shape[1]} tokens, config patch_nums "
                f"{config.patch_nums} give {config.num_tokens}"
            )
        return ""

    return diagnose


def diagnose_vqvae(state: dict[str, torch.Tensor], config: VQVAEConfig):
    def diagnose(missing: set[str], unexpected: set[str]) -> str:
        keys = set(state)
        if kind := llamagen_kind(keys):
            return f"this looks like {kind}, not VAR's VQVAE"
        if any(k.startswith("blocks.") for k in keys):
            return "this is a VAR transformer checkpoint, not the VQVAE"
        emb = state.get("quantize.embedding.weight")
        if emb is not None and tuple(emb.shape) != (config.vocab_size, config.z_channels):
            expected = (config.vocab_size, config.z_channels)
            return f"codebook is {tuple(emb.shape)}, config expects {expected}"
        if any("quant_resi" in k for k in missing | unexpected):
            return f"phi layout differs: check share_quant_resi (config {config.share_quant_resi})"
        return "ch / ch_mult / num_res_blocks differ between checkpoint and config"

    return diagnose


def load_var(
    path: str | Path, config: VARConfig | str, *, device: str | torch.device = "cpu"
) -> VAR:
    """A :class:`VAR` in eval mode with the weights of ``path`` (strict)."""
    config = VARConfig.preset(config) if isinstance(config, str) else config
    state = _strip_compiled_prefix(unwrap(read_state_dict(path), VAR_WRAPPERS, source=str(path)))
    model = build_empty(VAR, config, device)
    load_strict(model, state, source=str(path), diagnose=diagnose_var(state, config))
    return model.eval().requires_grad_(False)


def load_vqvae(
    path: str | Path, config: VQVAEConfig | str, *, device: str | torch.device = "cpu"
) -> VQVAE:
    """A :class:`VQVAE` in eval mode with the weights of ``path`` (strict).

    ``quantize.ema_vocab_hit_SV`` (a training statistic, one row per scale) is replaced by
    zeros of the model's shape when its scale count differs, as the official loader does.
    """
    config = VQVAEConfig.preset(config) if isinstance(config, str) else config
    state = _strip_compiled_prefix(unwrap(read_state_dict(path), VQVAE_WRAPPERS, source=str(path)))
    model = build_empty(VQVAE, config, device)
    own_hits = model.quantize.ema_vocab_hit_SV
    hits = state.get(_EMA_HITS_KEY)
    if (
        hits is not None
        and hits.dim() == 2
        and hits.shape[0] != own_hits.shape[0]
        and hits.shape[1] == own_hits.shape[1]
    ):
        state[_EMA_HITS_KEY] = torch.zeros_like(own_hits)
    load_strict(model, state, source=str(path), diagnose=diagnose_vqvae(state, config))
    return model.eval().requires_grad_(False)


def load_var_teacher(
    var_checkpoint: str | Path,
    vae_checkpoint: str | Path,
    *,
    var_config: VARConfig | str,
    vae_config: VQVAEConfig | str,
    device: str | torch.device = "cpu",
) -> VARTeacher:
    """The frozen teacher from the two official files (see docs/teachers.md)."""
    var = load_var(var_checkpoint, var_config, device=device)
    vae = load_vqvae(vae_checkpoint, vae_config, device=device)
    return VARTeacher(var, vae)
