"""The incremental, KV-cached VAR sampling session (``teachers.protocol.TeacherSession``).

One AR step is one scale. The session reproduces the official ``autoregressive_infer_cfg``:
the batch runs as ``[cond; null]`` (CFG), the logits of scale ``k`` are guided with the linear
ramp ``t = cfg * k / (K - 1)``, ``(1 + t) cond - t uncond``, then top-k, then top-p; the chosen
tokens (the same for both halves) are embedded, added to ``f_hat`` with the VQVAE (bicubic
up, phi) and the next scale's input is ``word_embed(area-downsampled f_hat)``.

Sampling settings honoured (``SamplingConfig``): ``cfg_scale``; ``cfg_schedule`` ``"linear"``
(official) or ``"constant"`` (``uncond + s (cond - uncond)`` at every scale); ``top_k``;
``top_p``; ``temperature`` (an extension: the official code has none; logits are divided
after CFG; 1.0 is the official behaviour). ``cfg_interval`` (LlamaGen only) is rejected by
``VARTeacher.check_sampling``.

Accepted scales are run through the trunk lazily, as LlamaGen's session runs its tokens:
``accept`` only does the VQVAE arithmetic (``f_hat`` and the next scale's input), and the next
``next_log_probs`` runs every pending scale in ONE KV-cached forward under the block-causal
mask (a scale sees its own and the earlier scales, as in teacher forcing). So feeding a given
prefix of scales (paper Alg. 4) costs one forward together with the first scale asked for,
and accepting the last scale costs none. A session asked for every scale (the teacher's own
sampler) runs one scale per forward without a mask, as the official sampler does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from teachers.protocol import SamplingConfig, check_tokens
from teachers.sampling import filter_logits
from teachers.var.model import KVCache

if TYPE_CHECKING:
    from teachers.var.teacher import VARTeacher


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
    """One KV-cached pass over a batch; use as a context manager (the cache is always freed).

    Made by ``VARTeacher.start``, which checks ``labels`` and ``sampling``."""

    def __init__(self, teacher: VARTeacher, labels: torch.Tensor, sampling: SamplingConfig) -> None:
        var, vae = teacher.var, teacher.vae
        self.teacher, self.sampling = teacher, sampling
        device = teacher.device
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
            # Inputs [X, p_k^2, C] of scales ran_scales..step, not yet run through the trunk.
            self._pending_x: list[torch.Tensor] = [var.start_tokens(self.cond_BD)]
        self._ran_scales = 0  # scales [0, ran_scales) are in the KV cache
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
            try:
                self._log_probs = self._run_scale()
            except BaseException:  # e.g. out of memory after the KV cache took this scale:
                self.close()  # a retry would run the scale twice; refuse it ("closed")
                raise
        return self._log_probs

    def _pending_bias(self) -> torch.Tensor | None:
        """Block-causal mask of the pending scales' queries over every key so far
        ``[1, 1, l_pending, l_all]``; ``None`` for one scale (it sees all cached keys and
        itself, the official sampler's unmasked step)."""
        if len(self._pending_x) == 1:
            return None
        ranges = self.teacher.var.config.scale_ranges
        begin, end = ranges[self._ran_scales][0], ranges[self._step][1]
        bias = self.teacher.var.attn_bias_for_masking[:, :, begin:end, :end]
        return bias.to(self._pending_x[0].dtype)

    def _run_scale(self) -> torch.Tensor:
        """One trunk forward over every pending scale; the guided log-probs of the last."""
        var = self.teacher.var
        x_XlC = torch.cat(self._pending_x, dim=1)
        h_XlC = var.run_blocks(x_XlC, self.cond_BD, self._pending_bias(), self.cache)
        self._ran_scales, self._pending_x = self._step + 1, []
        pn = self.teacher.geometry.step_grids[self._step][0]
        logits = var.get_logits(h_XlC[:, -pn * pn :], self.cond_BD)
        B, K = self.batch_size, self.teacher.geometry.num_steps
        if self.guided:
            logits = guide_logits(logits[:B], logits[B:], self.sampling, self._step, K)
        if self.sampling.temperature != 1.0:
            logits = logits / self.sampling.temperature
        logits = filter_logits(logits, top_k=self.sampling.top_k, top_p=self.sampling.top_p)
        return logits.float().log_softmax(dim=-1)

    @torch.no_grad()
    def accept(self, tokens: torch.Tensor) -> None:
        """Feed scale ``k``'s tokens ``[B, p_k^2]``; computes ``f_hat`` and the next input.

        No trunk pass: a scale nobody asked log-probs for stays pending until the next
        ``next_log_probs`` (see the module docstring)."""
        self._check_open()
        pn = self.teacher.geometry.step_grids[self._step][0]
        check_tokens(tokens, self.teacher.vocab_size, length=pn * pn, batch_size=self.batch_size)
        var, quant = self.teacher.var, self.teacher.vae.quantize
        tokens = tokens.to(self.f_hat.device).long()
        h_BChw = quant.embedding(tokens).transpose(1, 2).reshape(self.batch_size, -1, pn, pn)
        self.f_hat, next_BChw = quant.next_autoregressive_input(self._step, self.f_hat, h_BChw)
        self._step += 1
        self._log_probs = None
        if next_BChw is not None:
            next_BlCv = next_BChw.flatten(2).transpose(1, 2)
            x = var.scale_tokens(self._step, next_BlCv)
            self._pending_x.append(torch.cat((x, x)) if self.guided else x)
        else:
            self.close()

    def image(self) -> torch.Tensor:
        """Images in ``[0, 1]`` decoded from the accumulated ``f_hat`` (after the last scale);
        equal to ``teacher.decode_tokens`` of the accepted tokens, without re-embedding them."""
        if not self.done:
            raise RuntimeError(
                f"only {self._step} of {self.teacher.geometry.num_steps} scales accepted"
            )
        with torch.no_grad():
            return self.teacher.vae.fhat_to_img(self.f_hat).add(1).mul(0.5)

    def close(self) -> None:
        self._pending_x = []
        if self.cache is not None:
            self.cache.clear()
            self.cache = None

    def __enter__(self) -> VARSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
