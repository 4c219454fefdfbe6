"""``VARTeacher``: the VAR transformer and its VQVAE behind ``teachers.protocol.Teacher``.

One AR step is one scale (the session: ``teachers.var.session``). A frozen ``nn.Module`` in
eval mode (``teachers.frozen.FrozenTeacher``, which also checks inputs and moves them to
``device``). A DD student that reuses its modules copies them
(``copy.deepcopy(teacher.var.blocks)``). Gradients still flow through ``decode_embeddings``
into its input, as the LPIPS loss needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from teachers.fingerprint import ENTRY_NAME_SHAPE_DTYPE
from teachers.frozen import FrozenTeacher
from teachers.protocol import SamplingConfig, TokenGeometry, clamp_straight_through
from teachers.var.model import VAR
from teachers.var.sampling import DD_PAPER_SAMPLING
from teachers.var.session import VARSession
from teachers.var.student import VARStudentBackbone
from teachers.var.vqvae import VQVAE


class VARTeacher(FrozenTeacher):
    """The VAR transformer plus its VQVAE, as DD sees them (``teachers.protocol.Teacher``)."""

    family = "var"
    # Training statistics that do not change the model's outputs.
    fingerprint_excluded = frozenset({"vae.quantize.ema_vocab_hit_SV"})
    fingerprint_entry_format = ENTRY_NAME_SHAPE_DTYPE  # the layout its shards recorded

    def __init__(self, var: VAR, vae: VQVAE) -> None:
        super().__init__()
        vc, qc = var.config, vae.config
        if (vc.vocab_size, vc.cvae, vc.patch_nums) != (qc.vocab_size, qc.z_channels, qc.patch_nums):
            raise ValueError(
                f"VAR (V={vc.vocab_size}, Cvae={vc.cvae}, patch_nums={vc.patch_nums}) "
                "does not match the "
                f"VQVAE (V={qc.vocab_size}, Cvae={qc.z_channels}, patch_nums={qc.patch_nums})"
            )
        self.var, self.vae = var, vae
        self.geometry = TokenGeometry.multiscale(vc.patch_nums)
        self.num_classes = vc.num_classes
        self.freeze()

    @property
    def vocab_size(self) -> int:
        return self.vae.config.vocab_size

    @property
    def code_dim(self) -> int:
        return self.vae.config.z_channels

    @property
    def codebook(self) -> torch.Tensor:
        """``[V, Cvae]`` raw codebook (VAR's quantiser uses plain L2 nearest codes)."""
        return self.vae.codebook

    def default_sampling(self) -> SamplingConfig:
        """DD paper setting: cfg 2.0, linear ramp, top-k 900, top-p 0.96 (``SAMPLING_PRESETS``)."""
        return DD_PAPER_SAMPLING

    def check_sampling(self, sampling: SamplingConfig) -> None:
        if sampling.cfg_interval != -1.0:
            raise ValueError("VAR has no cfg_interval (a LlamaGen setting); use cfg_interval=-1")

    def open_session(self, labels: torch.Tensor, sampling: SamplingConfig) -> VARSession:
        return VARSession(self, labels, sampling)

    def fingerprint_parts(self) -> tuple[Mapping[str, object], Sequence[tuple[str, nn.Module]]]:
        configs = {"family": self.family, "var": self.var.config, "vae": self.vae.config}
        return configs, (("var.", self.var), ("vae.", self.vae))

    def student_backbone(self) -> nn.Module:
        """A trainable DD student backbone built from copies of this teacher's modules."""
        return VARStudentBackbone(self.var).to(self.device)

    def logits_teacher_forcing(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unguided logits ``[B, n, V]``; a scale sees the label and the earlier scales.

        ``labels`` may also be the null class (unconditional)."""
        labels = self.prepare_labels(labels, allow_null=True)
        x_BLCv = self.vae.quantize.indices_to_var_input(self.prepare_tokens(tokens))
        return self.var(labels, x_BLCv)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n]`` -> images ``[B, 3, H, W]`` in ``[0, 1]``."""
        return self.vae.indices_to_img(self.prepare_tokens(tokens)).add(1).mul(0.5)

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from per-token embeddings ``[B, n, Cvae]``, differentiable.

        ``f_hat = sum_k phi_k(bicubic_up(emb_k))``, then ``post_quant_conv`` and the decoder;
        a straight-through clamp to ``[0, 1]``.
        """
        embeddings = self.prepare_embeddings(embeddings)
        images_m11 = self.vae.fhat_to_unclamped_img(self.vae.embeddings_to_fhat(embeddings))
        # Clamped in value, not in gradient (the perceptual loss flows through here).
        return clamp_straight_through(images_m11.add(1).mul(0.5), 0.0, 1.0)
