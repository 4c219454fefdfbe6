"""VAR as a :class:`teachers.protocol.Teacher`: one AR step is one scale.

The session reproduces the official ``autoregressive_infer_cfg``: the batch runs as
``[cond; null]`` (CFG), the logits of scale ``k`` are guided with the linear ramp
``t = cfg * k / (K - 1)``, ``(1 + t) cond - t uncond``, then top-k, then top-p; the chosen
tokens (the same for both halves) are embedded, added to ``f_hat`` with the VQVAE (bicubic
up, phi) and the next scale's input is ``word_embed(area-downsampled f_hat)``.

Sampling settings honoured (``SamplingConfig``): ``cfg_scale``; ``cfg_schedule`` ``"linear"``
(official) or ``"constant"`` (``uncond + s (cond - uncond)`` at every scale); ``top_k``;
``top_p``; ``temperature`` (an extension: the official code has none; logits are divided
after CFG; 1.0 is the official behaviour). ``cfg_interval`` (LlamaGen only) is rejected.
"""

from __future__ import annotations

import hashlib
import json

import torch

from teachers.protocol import SamplingConfig, TokenGeometry, check_labels
from teachers.sampling import filter_logits
from teachers.var.model import VAR, KVCache
from teachers.var.vqvae import VQVAE

FINGERPRINT_CHARS = 16
# Training statistics that do not change the model's outputs.
FINGERPRINT_EXCLUDED = frozenset({"quantize.ema_vocab_hit_SV"})

# Paper (DD, Sec. 5) setting for both teachers: cfg 2.0; top-k/top-p as the VAR README.
DD_PAPER_SAMPLING = SamplingConfig(cfg_scale=2.0, cfg_schedule="linear", top_k=900, top_p=0.96)
# VAR README FID setting: autoregressive_infer_cfg(cfg=1.5, top_k=900, top_p=0.96).
README_FID_SAMPLING = SamplingConfig(cfg_scale=1.5, cfg_schedule="linear", top_k=900, top_p=0.96)
SAMPLING_PRESETS = {"dd_paper": DD_PAPER_SAMPLING, "readme_fid": README_FID_SAMPLING}


def guide_logits(
    cond_BlV: torch.Tensor,
    uncond_BlV: torch.Tensor,
    sampling: SamplingConfig,
    scale_index: int,
    num_scales: int,
) -> torch.Tensor:
    """Classifier-free guidance of scale ``k`` (linear ramp = official VAR)."""
    if sampling.cfg_schedule == "linear":
        t = sampling.cfg_scale * scale_index / (num_scales - 1)
        return (1 + t) * cond_BlV - t * uncond_BlV
    return uncond_BlV + (cond_BlV - uncond_BlV) * sampling.cfg_scale


class VARSession:
    """One KV-cached pass over a batch; use as a context manager (the cache is always freed)."""

    def __init__(self, teacher: VARTeacher, labels: torch.Tensor, sampling: SamplingConfig) -> None:
        var, vae = teacher.var, teacher.vae
        self.teacher, self.sampling = teacher, sampling
        device = var.lvl_1L.device
        self.batch_size = B = labels.shape[0]
        self.guided = sampling.uses_cfg and not (
            sampling.cfg_schedule == "linear" and sampling.cfg_scale == 0
        )
        labels = labels.to(device)
        if self.guided:  # official batch layout: [cond; null]
            labels = torch.cat((labels, torch.full_like(labels, var.null_class)))
        self._step = 0
        self._log_probs: torch.Tensor | None = None
        with torch.no_grad():
            self.cond_BD = var.class_emb(labels)
            self._x_BlC = var.start_tokens(self.cond_BD)
        last = vae.config.patch_nums[-1]
        self.f_hat = torch.zeros(B, vae.config.z_channels, last, last, device=device)
        self.cache: KVCache | None = KVCache(var.config.depth)

    @property
    def step(self) -> int:
        return self._step

    @property
    def done(self) -> bool:
        return self._step >= self.teacher.geometry.num_steps

    def _check_open(self) -> None:
        if self.cache is None:
            raise RuntimeError("session is closed")
        if self.done:
            raise RuntimeError(f"all {self.teacher.geometry.num_steps} scales are already accepted")

    @torch.no_grad()
    def next_log_probs(self) -> torch.Tensor:
        """Guided log-probabilities ``[B, p_k^2, V]`` of every token of scale ``k``, float32."""
        self._check_open()
        if self._log_probs is None:
            var = self.teacher.var
            h = var.run_blocks(self._x_BlC, self.cond_BD, None, self.cache)
            logits = var.get_logits(h, self.cond_BD)
            B, K = self.batch_size, self.teacher.geometry.num_steps
            if self.guided:
                logits = guide_logits(logits[:B], logits[B:], self.sampling, self._step, K)
            if self.sampling.temperature != 1.0:
                logits = logits / self.sampling.temperature
            logits = filter_logits(logits, top_k=self.sampling.top_k, top_p=self.sampling.top_p)
            self._log_probs = logits.float().log_softmax(dim=-1)
        return self._log_probs

    @torch.no_grad()
    def accept(self, tokens: torch.Tensor) -> None:
        """Feed scale ``k``'s tokens ``[B, p_k^2]``; computes ``f_hat`` and the next input."""
        self._check_open()
        pn = self.teacher.geometry.step_grids[self._step][0]
        vocab = self.teacher.vae.config.vocab_size
        if tokens.shape != (self.batch_size, pn * pn) or tokens.dtype.is_floating_point:
            raise ValueError(
                f"scale {self._step} expects integer tokens of shape {(self.batch_size, pn * pn)}, "
                f"got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
            raise ValueError(
                f"tokens must be in [0, {vocab}), got range [{tokens.min()}, {tokens.max()}]"
            )
        if self._log_probs is None:  # the scale must have run once to fill the KV cache
            self.next_log_probs()
        var, quant = self.teacher.var, self.teacher.vae.quantize
        tokens = tokens.to(self.f_hat.device).long()
        h_BChw = quant.embedding(tokens).transpose(1, 2).reshape(self.batch_size, -1, pn, pn)
        self.f_hat, next_BChw = quant.next_autoregressive_input(self._step, self.f_hat, h_BChw)
        self._step += 1
        self._log_probs = None
        if next_BChw is not None:
            next_BlCv = next_BChw.flatten(2).transpose(1, 2)
            x = var.scale_tokens(self._step, next_BlCv)
            self._x_BlC = torch.cat((x, x)) if self.guided else x
        else:
            self._x_BlC = None
            self.close()

    def image(self) -> torch.Tensor:
        """Images in ``[0, 1]`` decoded from the accumulated ``f_hat`` (after the last scale)."""
        if not self.done:
            raise RuntimeError(
                f"only {self._step} of {self.teacher.geometry.num_steps} scales accepted"
            )
        with torch.no_grad():
            return self.teacher.vae.fhat_to_img(self.f_hat).add(1).mul(0.5)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.clear()
            self.cache = None

    def __enter__(self) -> VARSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VARTeacher:
    """The VAR transformer plus its VQVAE, as DD sees them (``teachers.protocol.Teacher``)."""

    family = "var"

    def __init__(self, var: VAR, vae: VQVAE) -> None:
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
        self._fingerprint: str | None = None

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def codebook(self) -> torch.Tensor:
        return self.vae.codebook

    def default_sampling(self) -> SamplingConfig:
        """DD paper setting: cfg 2.0, linear ramp, top-k 900, top-p 0.96 (``SAMPLING_PRESETS``)."""
        return DD_PAPER_SAMPLING

    def fingerprint(self) -> str:
        """sha256 over both configs and every weight and buffer of both models (not usage stats)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            configs = {
                "family": self.family,
                "var": self.var.config.to_dict(),
                "vae": self.vae.config.to_dict(),
            }
            digest.update(json.dumps(configs, sort_keys=True).encode())
            for prefix, module in (("var.", self.var), ("vae.", self.vae)):
                for name, tensor in sorted(module.state_dict().items()):
                    if name in FINGERPRINT_EXCLUDED:
                        continue
                    digest.update(f"{prefix}{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                    digest.update(
                        tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                    )
            self._fingerprint = digest.hexdigest()[:FINGERPRINT_CHARS]
        return self._fingerprint

    def _check_sampling(self, sampling: SamplingConfig) -> None:
        if sampling.cfg_interval != -1.0:
            raise ValueError("VAR has no cfg_interval (a LlamaGen setting); use cfg_interval=-1")

    def start(self, labels: torch.Tensor, sampling: SamplingConfig | None = None) -> VARSession:
        check_labels(labels, self.num_classes)
        sampling = sampling or self.default_sampling()
        self._check_sampling(sampling)
        return VARSession(self, labels, sampling)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        n, V = self.geometry.num_tokens, self.vae.config.vocab_size
        if tokens.dim() != 2 or tokens.shape[1] != n or tokens.dtype.is_floating_point:
            raise ValueError(
                f"tokens must be integer [B, {n}], got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= V):
            raise ValueError(
                f"tokens must be in [0, {V}), got range [{tokens.min()}, {tokens.max()}]"
            )

    def logits_teacher_forcing(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unguided logits ``[B, n, V]``; a scale sees the label and the earlier scales."""
        check_labels(labels, self.num_classes, allow_null=True)
        self._check_tokens(tokens)
        x_BLCv = self.vae.quantize.indices_to_var_input(tokens)
        return self.var(labels, x_BLCv)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_tokens(tokens)
        return self.vae.indices_to_img(tokens).add(1).mul(0.5)

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from per-token embeddings ``[B, n, Cvae]``, differentiable.

        ``f_hat = sum_k phi_k(bicubic_up(emb_k))``, then ``post_quant_conv`` and the decoder.
        """
        n, C = self.geometry.num_tokens, self.vae.config.z_channels
        if embeddings.dim() != 3 or tuple(embeddings.shape[1:]) != (n, C):
            raise ValueError(f"embeddings must be [B, {n}, {C}], got {tuple(embeddings.shape)}")
        return self.vae.fhat_to_img(self.vae.embeddings_to_fhat(embeddings)).add(1).mul(0.5)
