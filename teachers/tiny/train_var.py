"""Training a tiny VAR teacher: the multi-scale VQVAE, then the next-scale transformer.

Both are the family's own modules (``teachers.var.VQVAE`` / ``VAR``):

- VQVAE: reconstruction (MSE + L1) + the quantiser's own loss (``VectorQuantizer.forward``:
  commitment ``beta |sg(f_hat) - f|^2`` + codebook/phi ``|f_hat - sg(f)|^2``, averaged over
  scales; straight-through ``f_hat``). Codes start on residual vectors of a first batch and
  codes no scale used for ``dead_code_every`` steps restart on random residuals of every scale
  (residuals shrink from coarse to fine scales, so restarts draw from all of them).
- VAR: cross-entropy of all tokens under the block-causal mask (teacher forcing on the
  next-scale inputs of the tokenizer); ``VAR.forward`` replaces labels by the null class with
  ``cond_drop_rate`` in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from teachers.data import ImageSet
from teachers.tiny.common import (
    augmented_copies,
    code_usage,
    perplexity,
    restart_codes,
    sample_batch,
    warmup_cosine,
)
from teachers.tiny.presets import TrainSettings
from teachers.var import VAR, VQVAE, VARConfig, VQVAEConfig

ENCODE_BATCH = 512
HEAD_INIT_SCALE = 0.1  # small initial logits: training starts near the uniform distribution


@torch.no_grad()
def scale_residuals(vae: VQVAE, f_BChw: torch.Tensor) -> torch.Tensor:
    """The residual each scale quantises, all scales' vectors stacked ``[N, Cvae]``."""
    quant = vae.quantize
    _, f_hats = quant.residual_quantize(f_BChw)
    pool, C = [], f_BChw.shape[1]
    for si, pn in enumerate(quant.patch_nums):
        rest = f_BChw if si == 0 else f_BChw - f_hats[si - 1]
        rest = F.interpolate(rest, size=(pn, pn), mode="area") if pn != rest.shape[-1] else rest
        pool.append(rest.permute(0, 2, 3, 1).reshape(-1, C))
    return torch.cat(pool)


def vqvae_loss(
    vae: VQVAE, images: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """(loss, parts, tokens ``[B, n]``, encoder output ``f``) of one batch."""
    f_BChw = vae.img_to_f(images)
    f_hat, quant_loss, indices = vae.quantize(f_BChw)
    recon = vae.decoder(vae.post_quant_conv(f_hat))
    reconstruction = F.mse_loss(recon, images) + F.l1_loss(recon, images)
    loss = reconstruction + quant_loss
    parts = {"rec": reconstruction.item(), "vq": quant_loss.item()}
    return loss, parts, torch.cat(indices, dim=1), f_BChw.detach()


def train_vqvae(
    train: ImageSet, config: VQVAEConfig, settings: TrainSettings, *, progress: bool = True
) -> tuple[VQVAE, dict]:
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    vae = VQVAE(config).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.tokenizer_lr, betas=(0.9, 0.99))
    steps = settings.tokenizer_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, steps, settings.warmup_steps)
    )
    codebook = vae.quantize.embedding.weight
    all_codes = torch.ones(config.vocab_size, dtype=torch.bool)
    with torch.no_grad():  # data-driven init: codes start on encoder outputs of a batch
        images, _ = sample_batch(train, settings.tokenizer_batch_size, 0, generator)
        f = vae.img_to_f(images)
        restart_codes(
            codebook.data, all_codes, f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), generator
        )
        restart_codes(codebook.data, all_codes, scale_residuals(vae, f), generator)
    window_counts = torch.zeros(config.vocab_size, dtype=torch.long)
    losses, restarts = [], 0
    bar = tqdm(range(steps), desc="var vqvae", disable=not progress)
    for step in bar:
        images, _ = sample_batch(
            train, settings.tokenizer_batch_size, settings.max_shift, generator
        )
        loss, parts, tokens, f_BChw = vqvae_loss(vae, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        window_counts += code_usage(tokens, config.vocab_size)
        if (step + 1) % settings.dead_code_every == 0:
            if step < steps * 3 // 4:  # let the codebook settle before the end
                dead = window_counts == 0
                if dead.any():
                    restarts += restart_codes(
                        codebook.data, dead, scale_residuals(vae, f_BChw), generator
                    )
            bar.set_postfix(rec=f"{parts['rec']:.4f}", ppl=f"{perplexity(window_counts):.0f}")
            window_counts.zero_()
    vae.eval().requires_grad_(False)
    return vae, {"losses": losses, "code_restarts": restarts}


@torch.no_grad()
def encode_tokens(vae: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Multi-scale tokens ``[N, n]`` of images in ``[-1, 1]``."""
    return torch.cat([vae.encode_indices(b) for b in images.split(ENCODE_BATCH)])


@torch.no_grad()
def teacher_forcing_inputs(vae: VQVAE, tokens: torch.Tensor) -> torch.Tensor:
    """Next-scale inputs ``[N, n - first_l, Cvae]`` of tokens (what ``VAR.forward`` reads)."""
    return torch.cat([vae.quantize.indices_to_var_input(b) for b in tokens.split(ENCODE_BATCH)])


def var_loss(var: VAR, labels: torch.Tensor, inputs: torch.Tensor, tokens: torch.Tensor):
    logits_BnV = var(labels, inputs)
    return F.cross_entropy(logits_BnV.reshape(-1, logits_BnV.shape[-1]), tokens.reshape(-1))


def train_var_model(
    tokens: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: VARConfig,
    settings: TrainSettings,
    *,
    heldout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
) -> tuple[VAR, dict]:
    """VAR trained on ``tokens [N, n]`` with their next-scale ``inputs`` and ``labels``."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    torch.manual_seed(settings.seed + 1)
    var = VAR(config)
    var.init_weights(seed=settings.seed + 1)
    with torch.no_grad():
        var.head.weight.mul_(HEAD_INIT_SCALE)
    var.train()
    decay = [p for n, p in var.named_parameters() if p.dim() >= 2 and "pos_" not in n]
    no_decay = [p for n, p in var.named_parameters() if p.dim() < 2 or "pos_" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.ar_weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.ar_lr,
        betas=(0.9, 0.95),
    )
    steps = settings.ar_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, steps, settings.warmup_steps)
    )
    losses = []
    bar = tqdm(range(steps), desc="var transformer", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, tokens.shape[0], (settings.ar_batch_size,), generator=generator)
        loss = var_loss(var, labels[idx], inputs[idx], tokens[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(ce=f"{sum(losses[-50:]) / 50:.3f}")
    var.eval().requires_grad_(False)
    record: dict = {"losses": losses}
    if heldout is not None:
        with torch.no_grad():
            record["heldout_ce"] = var_loss(var, heldout[2], heldout[1], heldout[0]).item()
    return var, record


def train_var(
    train: ImageSet,
    var_config: VARConfig,
    vae_config: VQVAEConfig,
    settings: TrainSettings,
    *,
    heldout: ImageSet | None = None,
    progress: bool = True,
) -> tuple[VAR, VQVAE, dict]:
    """VQVAE, then VAR on the tokens of ``token_copies`` shifted copies of the train set."""
    vae, vae_record = train_vqvae(train, vae_config, settings, progress=progress)
    generator = torch.Generator().manual_seed(settings.seed + 2)
    images, labels = augmented_copies(train, settings.token_copies, settings.max_shift, generator)
    tokens = encode_tokens(vae, images)
    inputs = teacher_forcing_inputs(vae, tokens)
    with torch.no_grad():
        recon = vae.indices_to_img(tokens[: len(train)])
        vae_record["train_recon_mse"] = F.mse_loss(recon, train.images).item()
    vae_record["train_code_perplexity"] = perplexity(code_usage(tokens, vae_config.vocab_size))
    held = None
    if heldout is not None:
        held_tokens = encode_tokens(vae, heldout.images)
        held = (held_tokens, teacher_forcing_inputs(vae, held_tokens), heldout.labels)
    var, var_record = train_var_model(
        tokens, inputs, labels, var_config, settings, heldout=held, progress=progress
    )
    return var, vae, {"tokenizer": vae_record, "ar": var_record}
