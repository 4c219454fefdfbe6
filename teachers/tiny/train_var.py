"""Training a tiny VAR teacher: the multi-scale VQVAE, then the next-scale transformer.

Both are the family's own modules (``teachers.var.VQVAE`` / ``VAR``):

- VQVAE: reconstruction (MSE + L1) + the quantiser's own loss (``VectorQuantizer.forward``:
  commitment ``beta |sg(f_hat) - f|^2`` + codebook/phi ``|f_hat - sg(f)|^2``, averaged over
  scales; straight-through ``f_hat``). Codes start on residual vectors of a first batch and
  codes no scale used for ``dead_code_every`` steps restart on random residuals of every scale
  (residuals shrink from coarse to fine scales, so restarts draw from all of them).
- VAR: cross-entropy of all tokens under the block-causal mask (teacher forcing on the
  next-scale inputs of the tokenizer); labels are replaced by the null class with
  ``cond_drop_rate`` (``drop_labels``, from a seeded generator: ``VAR.forward`` holds no RNG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from teachers.data import ImageSet
from teachers.tiny.common import (
    augmented_copies,
    code_usage,
    drop_labels,
    perplexity,
    restart_codes,
    sample_batch,
    seeded_generator,
    token_cross_entropy,
    train_ar_model,
    train_tokenizer,
)
from teachers.tiny.presets import TrainSettings
from teachers.tiny.resume import NO_PROGRESS
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
    generator = seeded_generator(settings.seed)
    vae = VQVAE(config).train()
    codebook = vae.quantize.embedding.weight
    all_codes = torch.ones(config.vocab_size, dtype=torch.bool)
    with torch.no_grad():  # data-driven init: codes start on encoder outputs of a batch
        images, _ = sample_batch(train, settings.tokenizer_batch_size, 0, generator)
        f = vae.img_to_f(images)
        restart_codes(
            codebook.data, all_codes, f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), generator
        )
        restart_codes(codebook.data, all_codes, scale_residuals(vae, f), generator)

    def restart_dead(dead: torch.Tensor, f_BChw: torch.Tensor) -> int:
        if not dead.any():
            return 0
        return restart_codes(codebook.data, dead, scale_residuals(vae, f_BChw), generator)

    record = train_tokenizer(
        vae,
        train,
        settings,
        generator,
        vocab_size=config.vocab_size,
        batch_loss=lambda images: vqvae_loss(vae, images),
        restart_dead=restart_dead,
        desc="var vqvae",
        progress=progress,
    )
    return vae, record


@torch.no_grad()
def encode_tokens(vae: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Multi-scale tokens ``[N, n]`` of images in ``[-1, 1]``."""
    return torch.cat([vae.encode_indices(b) for b in images.split(ENCODE_BATCH)])


@torch.no_grad()
def teacher_forcing_inputs(vae: VQVAE, tokens: torch.Tensor) -> torch.Tensor:
    """Next-scale inputs ``[N, n - first_l, Cvae]`` of tokens (what ``VAR.forward`` reads)."""
    return torch.cat([vae.quantize.indices_to_var_input(b) for b in tokens.split(ENCODE_BATCH)])


def var_loss(var: VAR, labels: torch.Tensor, inputs: torch.Tensor, tokens: torch.Tensor):
    return token_cross_entropy(var(labels, inputs), tokens)


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
    generator = seeded_generator(settings.seed + 1)
    var = VAR(config)
    # The label-drop stream continues the global RNG (seeded above) where module init left
    # it: the stream the drop was once drawn from inside VAR.forward, so the command recorded
    # in tiny.json still reproduces the shipped weights.
    drop_generator = torch.Generator().set_state(torch.get_rng_state())
    var.init_weights(seed=settings.seed + 1)
    with torch.no_grad():
        var.head.weight.mul_(HEAD_INIT_SCALE)
    var.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        batch_labels = drop_labels(
            labels[idx], config.num_classes, config.cond_drop_rate, drop_generator
        )
        return var_loss(var, batch_labels, inputs[idx], tokens[idx])

    record = train_ar_model(
        var,
        tokens.shape[0],
        settings,
        generator,
        batch_loss=batch_loss,
        heldout_loss=(
            None if heldout is None else lambda: var_loss(var, heldout[2], heldout[1], heldout[0])
        ),
        no_decay_names=("pos_",),
        desc="var transformer",
        progress=progress,
    )
    return var, record


def train_var(
    train: ImageSet,
    var_config: VARConfig,
    vae_config: VQVAEConfig,
    settings: TrainSettings,
    *,
    heldout: ImageSet | None = None,
    progress: bool = True,
    stages=NO_PROGRESS,
) -> tuple[VAR, VQVAE, dict]:
    """VQVAE, then VAR on the tokens of ``token_copies`` shifted copies of the train set;
    ``stages`` (a ``RunProgress``) keeps each trained stage and gives it back on a rerun."""
    vae, vae_record = stages.run(
        "1-tokenizer",
        lambda: train_vqvae(train, vae_config, settings, progress=progress),
        lambda: VQVAE(vae_config),
    )
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
    var, var_record = stages.run(
        "2-ar",
        lambda: train_var_model(
            tokens, inputs, labels, var_config, settings, heldout=held, progress=progress
        ),
        lambda: VAR(var_config),
    )
    return var, vae, {"tokenizer": vae_record, "ar": var_record}
