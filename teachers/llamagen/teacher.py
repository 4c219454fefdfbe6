"""``LlamaGenTeacher``: the GPT and the VQ tokenizer behind ``teachers.protocol.Teacher``.

A frozen ``nn.Module`` in eval mode (``teachers.frozen.FrozenTeacher``, which also checks
inputs and moves them to ``device``). A DD student that reuses its modules copies them
(``copy.deepcopy(teacher.gpt.layers)``). Gradients still flow through ``decode_embeddings``
into its input, as the LPIPS loss needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from teachers.fingerprint import ENTRY_NAME_DTYPE_SHAPE
from teachers.frozen import FrozenTeacher
from teachers.llamagen.gpt import GPT
from teachers.llamagen.sampling import DD_PAPER_SAMPLING
from teachers.llamagen.session import LlamaGenSession
from teachers.llamagen.student import LlamaGenStudentBackbone
from teachers.llamagen.vq import VQModel
from teachers.protocol import SamplingConfig, TokenGeometry, clamp_straight_through


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]``, clamped (as the official ``save_image(value_range=(-1, 1))``)."""
    return ((images + 1) / 2).clamp(0, 1)


class LlamaGenTeacher(FrozenTeacher):
    family = "llamagen"
    # Training statistics that never change an output: left out of the fingerprint.
    fingerprint_excluded = frozenset({"vq.quantize.codebook_used"})
    fingerprint_entry_format = ENTRY_NAME_DTYPE_SHAPE  # the layout its shards recorded

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
        self.freeze()

    @property
    def vocab_size(self) -> int:
        return self.gpt.config.vocab_size

    @property
    def code_dim(self) -> int:
        return self.vq.config.codebook_embed_dim

    @property
    def codebook(self) -> torch.Tensor:
        """``[V, C]`` L2-normalised codebook (what the quantiser looks up and the decoder reads)."""
        return self.vq.codebook()

    @property
    def image_size(self) -> int:
        return self.gpt.config.grid_size * self.vq.config.downsample_factor

    def default_sampling(self) -> SamplingConfig:
        """The paper's DD setting: constant CFG 2.0, no top-k / top-p, temperature 1."""
        return DD_PAPER_SAMPLING

    def check_sampling(self, sampling: SamplingConfig) -> None:
        if sampling.cfg_schedule != "constant":
            raise ValueError(
                f"LlamaGen guides with a constant scale; got cfg_schedule={sampling.cfg_schedule!r}"
            )
        if sampling.uses_cfg and not self.gpt.config.has_null_class:
            raise ValueError(
                "this GPT has no null-class embedding (class_dropout_prob=0): CFG is impossible"
            )

    def open_session(self, labels: torch.Tensor, sampling: SamplingConfig) -> LlamaGenSession:
        return LlamaGenSession(self.gpt, labels, sampling)

    def fingerprint_parts(self) -> tuple[Mapping[str, object], Sequence[tuple[str, nn.Module]]]:
        configs = {"gpt": self.gpt.config, "vq": self.vq.config}
        return configs, (("gpt.", self.gpt), ("vq.", self.vq))

    def student_backbone(self, *, teacher_aligned: bool = True) -> nn.Module:
        """A trainable DD student backbone built from copies of this teacher's modules
        (``teacher_aligned``: ``LlamaGenStudentBackbone``'s readout; False: the paper's)."""
        backbone = LlamaGenStudentBackbone(self.gpt, self.codebook, teacher_aligned=teacher_aligned)
        return backbone.to(self.device)

    def logits_teacher_forcing(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unguided logits ``[B, n, V]``; ``labels`` may also be the null class (unconditional)."""
        labels = self.prepare_labels(labels, allow_null=self.gpt.config.has_null_class)
        tokens = self.prepare_tokens(tokens)
        return self.gpt(labels, tokens[:, :-1])

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n]`` -> images ``[B, 3, H, W]`` in ``[0, 1]``."""
        tokens = self.prepare_tokens(tokens)
        return to_unit_range(self.vq.decode_code(tokens, self.geometry.image_grid))

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-token embeddings ``[B, n, C]`` (codebook space) -> images in ``[0, 1]``.

        Differentiable in ``embeddings``, with a straight-through clamp to ``[0, 1]``."""
        embeddings = self.prepare_embeddings(embeddings)
        height, width = self.geometry.image_grid
        maps_BChw = embeddings.reshape(-1, height, width, self.code_dim).permute(0, 3, 1, 2)
        # Clamped in value, not in gradient (the perceptual loss flows through here).
        return clamp_straight_through((self.vq.decode(maps_BChw) + 1) / 2, 0.0, 1.0)
