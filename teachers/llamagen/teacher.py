"""``LlamaGenTeacher``: the GPT and the VQ tokenizer behind ``teachers.protocol.Teacher``.

The teacher is frozen (no parameter requires grad); a DD student that reuses its modules
copies them (``copy.deepcopy(teacher.gpt.layers)``). Gradients still flow through
``decode_embeddings`` into its input, as the LPIPS loss needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
from torch import nn

from teachers.llamagen.gpt import GPT
from teachers.llamagen.sampling import DD_SAMPLING
from teachers.llamagen.session import LlamaGenSession
from teachers.llamagen.vq import VQModel
from teachers.protocol import SamplingConfig, TokenGeometry, check_labels

FINGERPRINT_HEX_CHARS = 16
# Training statistics that never change an output: left out of the fingerprint.
_FINGERPRINT_SKIP = ("vq.quantize.codebook_used",)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]``, clamped (as the official ``save_image(value_range=(-1, 1))``)."""
    return ((images + 1) / 2).clamp(0, 1)


class LlamaGenTeacher(nn.Module):
    family = "llamagen"

    def __init__(self, gpt: GPT, vq: VQModel):
        super().__init__()
        if gpt.config.vocab_size != vq.config.codebook_size:
            raise ValueError(
                f"GPT vocab_size {gpt.config.vocab_size} != "
                f"VQ codebook_size {vq.config.codebook_size}"
            )
        self.gpt, self.vq = gpt, vq
        side = gpt.config.grid_size
        self.geometry = TokenGeometry.raster(side, side)
        self.num_classes = gpt.config.num_classes
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        self.eval()

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def codebook(self) -> torch.Tensor:
        """``[V, C]`` L2-normalised codebook (what the quantiser looks up and the decoder reads)."""
        return self.vq.codebook()

    @property
    def image_size(self) -> int:
        return self.gpt.config.grid_size * self.vq.config.downsample_factor

    def default_sampling(self) -> SamplingConfig:
        """The paper's DD setting: constant CFG 2.0, no top-k / top-p, temperature 1."""
        return DD_SAMPLING

    def fingerprint(self) -> str:
        """sha256 of both configs and every weight (names, dtypes, shapes, bytes); computed once."""
        if self._fingerprint is None:
            hasher = hashlib.sha256()
            configs = {
                "gpt": dataclasses.asdict(self.gpt.config),
                "vq": dataclasses.asdict(self.vq.config),
            }
            hasher.update(json.dumps(configs, sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                if name in _FINGERPRINT_SKIP:
                    continue
                hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                hasher.update(
                    tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                )
            self._fingerprint = hasher.hexdigest()[:FINGERPRINT_HEX_CHARS]
        return self._fingerprint

    def start(self, labels: torch.Tensor, sampling: SamplingConfig) -> LlamaGenSession:
        return LlamaGenSession(self.gpt, labels, sampling)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        n, vocab = self.geometry.num_tokens, self.gpt.config.vocab_size
        if tokens.dim() != 2 or tokens.shape[1] != n or tokens.dtype.is_floating_point:
            raise ValueError(
                f"tokens must be integers [B, {n}], got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
            raise ValueError(
                f"tokens must be in [0, {vocab}), got {tokens.min().item()}..{tokens.max().item()}"
            )

    def logits_teacher_forcing(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unguided logits ``[B, n, V]``; ``labels`` may also be the null class (unconditional)."""
        check_labels(labels, self.num_classes, allow_null=self.gpt.config.has_null_class)
        self._check_tokens(tokens)
        device = self.gpt.tok_embeddings.weight.device
        return self.gpt(labels.to(device), tokens[:, :-1].to(device))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n]`` -> images ``[B, 3, H, W]`` in ``[0, 1]``."""
        self._check_tokens(tokens)
        device = self.vq.post_quant_conv.weight.device
        return to_unit_range(self.vq.decode_code(tokens.to(device), self.geometry.image_grid))

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-token embeddings ``[B, n, C]`` (codebook space) -> images in ``[0, 1]``.

        Differentiable in ``embeddings``."""
        n, dim = self.geometry.num_tokens, self.vq.config.codebook_embed_dim
        if embeddings.dim() != 3 or embeddings.shape[1:] != (n, dim):
            raise ValueError(f"embeddings must be [B, {n}, {dim}], got {tuple(embeddings.shape)}")
        height, width = self.geometry.image_grid
        maps_BChw = embeddings.reshape(-1, height, width, dim).permute(0, 3, 1, 2)
        return to_unit_range(self.vq.decode(maps_BChw))
