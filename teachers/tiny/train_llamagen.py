"""Training a tiny LlamaGen teacher: the VQ tokenizer, then the class-conditional GPT.

Both are the family's own modules (``teachers.llamagen.VQModel`` / ``GPT``). The official
training losses, kept small:

- VQ: reconstruction (MSE + L1) + codebook loss ``|sg(z) - q|^2`` + commitment
  ``beta |z - sg(q)|^2`` on the L2-normalised latents, straight-through gradient to the
  encoder; codes are initialised from encoder outputs and codes unused for
  ``dead_code_every`` steps are restarted on random latents of the current batch.
- Decoder refit (when the VQ config's decoder is shaped unlike its encoder): a fresh, lighter
  decoder and ``post_quant_conv`` trained on the same reconstruction loss over the frozen
  encoder's quantised codes, so tokens, codebook and GPT are unchanged; the tokenizer is first
  trained with an encoder-shaped decoder, the official layout.
- GPT: next-token cross-entropy with teacher forcing over ``[class, x_1..x_{n-1}]``; the
  label is replaced by the null class with ``class_dropout_prob`` (CFG at sampling time),
  drawn from the trainer's seeded generator (``drop_labels``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from teachers.data import ImageSet
from teachers.llamagen import GPT, GPTConfig, VQConfig, VQModel
from teachers.tiny.common import (
    augmented_copies,
    code_usage,
    drop_labels,
    optimise,
    perplexity,
    restart_codes,
    sample_batch,
    seeded_generator,
    token_cross_entropy,
    train_ar_model,
    train_tokenizer,
    warmup_cosine_schedule,
)
from teachers.tiny.presets import TrainSettings
from teachers.tiny.resume import NO_PROGRESS

ENCODE_BATCH = 512


def _latents(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised pre-quantisation latents ``[B, C, h, w]`` (what the quantiser compares)."""
    return F.normalize(vq.quant_conv(vq.encoder(images)), dim=1)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """MSE + L1 between decoded and target images in ``[-1, 1]``."""
    return F.mse_loss(recon, images) + F.l1_loss(recon, images)


def vq_loss(
    vq: VQModel, images: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """(loss, parts, code indices ``[B, h, w]``, latents ``[B, C, h, w]``) of one batch."""
    z_BChw = _latents(vq, images)
    with torch.no_grad():
        _, indices_Bhw = vq.quantize(z_BChw)
    q_BChw = vq.codebook()[indices_Bhw].permute(0, 3, 1, 2)
    codebook = F.mse_loss(q_BChw, z_BChw.detach())
    commitment = F.mse_loss(z_BChw, q_BChw.detach())
    quant_st = z_BChw + (q_BChw - z_BChw).detach()  # straight-through estimator
    reconstruction = reconstruction_loss(vq.decode(quant_st), images)
    loss = reconstruction + codebook + beta * commitment
    parts = {"rec": reconstruction.item(), "cb": codebook.item(), "commit": commitment.item()}
    return loss, parts, indices_Bhw, z_BChw.detach()


def train_vq(
    train: ImageSet, config: VQConfig, settings: TrainSettings, *, progress: bool = True
) -> tuple[VQModel, dict]:
    generator = seeded_generator(settings.seed)
    vq = VQModel(config).train()
    codebook = vq.quantize.embedding.weight
    with torch.no_grad():  # data-driven init: every code starts on an encoder latent
        images, _ = sample_batch(train, settings.tokenizer_batch_size, 0, generator)
        pool = _latents(vq, images).permute(0, 2, 3, 1).reshape(-1, config.codebook_embed_dim)
        restart_codes(codebook.data, torch.ones(len(codebook), dtype=torch.bool), pool, generator)

    def restart_dead(dead: torch.Tensor, latents: torch.Tensor) -> int:
        pool = latents.permute(0, 2, 3, 1).reshape(-1, config.codebook_embed_dim)
        return restart_codes(codebook.data, dead, pool, generator)

    record = train_tokenizer(
        vq,
        train,
        settings,
        generator,
        vocab_size=config.codebook_size,
        batch_loss=lambda images: vq_loss(vq, images, settings.commitment_beta),
        restart_dead=restart_dead,
        desc="llamagen vq",
        progress=progress,
    )
    return vq, record


def refit_decoder(
    vq: VQModel,
    config: VQConfig,
    train: ImageSet,
    settings: TrainSettings,
    *,
    progress: bool = True,
) -> tuple[VQModel, dict]:
    """A ``VQModel(config)`` holding ``vq``'s encoder, ``quant_conv`` and codebook (frozen, so
    every image keeps its tokens) and a fresh decoder + ``post_quant_conv`` of ``config``'s
    shape, trained ``decoder_steps`` steps on the reconstruction loss of the quantised codes."""
    generator = seeded_generator(settings.seed + 3)
    refit = VQModel(config)
    for part in ("encoder", "quant_conv", "quantize"):
        getattr(refit, part).load_state_dict(getattr(vq, part).state_dict())
    head = torch.nn.ModuleDict({"post": refit.post_quant_conv, "decoder": refit.decoder})
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.tokenizer_lr, betas=(0.9, 0.99))
    schedule = warmup_cosine_schedule(optimizer, settings, settings.decoder_steps)
    refit.eval().requires_grad_(False)
    head.train().requires_grad_(True)
    losses = []
    bar = tqdm(range(settings.decoder_steps), desc="llamagen decoder", disable=not progress)
    for step in bar:
        images, _ = sample_batch(
            train, settings.tokenizer_batch_size, settings.max_shift, generator
        )
        with torch.no_grad():
            quant_BChw, _ = vq.encode(images)
        losses.append(
            optimise(reconstruction_loss(refit.decode(quant_BChw), images), optimizer, schedule)
        )
        if (step + 1) % 50 == 0:
            bar.set_postfix(rec=f"{losses[-1]:.4f}")
    refit.eval().requires_grad_(False)
    return refit, {"losses": losses}


@torch.no_grad()
def encode_tokens(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """Raster tokens ``[N, h * w]`` of images in ``[-1, 1]``."""
    return torch.cat([vq.encode(b)[1] for b in images.split(ENCODE_BATCH)])


def gpt_loss(gpt: GPT, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy (mean over tokens)."""
    return token_cross_entropy(gpt(labels, tokens[:, :-1]), tokens)


def train_gpt(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    config: GPTConfig,
    settings: TrainSettings,
    *,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
) -> tuple[GPT, dict]:
    """The c2i GPT trained on ``tokens [N, n]`` with ``labels [N]``; record has losses."""
    generator = seeded_generator(settings.seed + 1)
    gpt = GPT(config).train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        batch_labels = drop_labels(
            labels[idx], config.num_classes, config.class_dropout_prob, generator
        )
        return gpt_loss(gpt, batch_labels, tokens[idx])

    record = train_ar_model(
        gpt,
        tokens.shape[0],
        settings,
        generator,
        batch_loss=batch_loss,
        heldout_loss=None if heldout is None else lambda: gpt_loss(gpt, heldout[1], heldout[0]),
        desc="llamagen gpt",
        progress=progress,
    )
    return gpt, record


def train_llamagen(
    train: ImageSet,
    gpt_config: GPTConfig,
    vq_config: VQConfig,
    settings: TrainSettings,
    *,
    heldout: ImageSet | None = None,
    progress: bool = True,
    stages=NO_PROGRESS,
) -> tuple[GPT, VQModel, dict]:
    """Tokenizer (with an encoder-shaped decoder), GPT on the tokens of ``token_copies`` shifted
    copies of the train set, then, if ``vq_config``'s decoder is shaped otherwise, its refit.
    Reconstruction errors are recorded for the decoder trained with the tokenizer and, after
    a refit, for the refitted one. ``stages`` (a ``RunProgress``) keeps each trained stage
    and gives it back on a rerun; what runs between stages is recomputed from them."""
    tokenizer_config = vq_config.with_encoder_shaped_decoder()
    vq, vq_record = stages.run(
        "1-tokenizer",
        lambda: train_vq(train, tokenizer_config, settings, progress=progress),
        lambda: VQModel(tokenizer_config),
    )
    generator = torch.Generator().manual_seed(settings.seed + 2)
    images, labels = augmented_copies(train, settings.token_copies, settings.max_shift, generator)
    tokens = encode_tokens(vq, images)
    # Tokens of the train and held-out images (the refit keeps them): (tokens, images) pairs.
    sets = {"train": (tokens[: len(train)], train.images)}
    held = None
    if heldout is not None:
        held = (encode_tokens(vq, heldout.images), heldout.labels)
        sets["heldout"] = (held[0], heldout.images)
    grid = (gpt_config.grid_size,) * 2
    vq_record.update(_recon_errors(vq, sets, grid))
    vq_record["train_code_perplexity"] = perplexity(code_usage(tokens, vq_config.codebook_size))
    gpt, gpt_record = stages.run(
        "2-ar",
        lambda: train_gpt(tokens, labels, gpt_config, settings, heldout=held, progress=progress),
        lambda: GPT(gpt_config),
    )
    record = {"tokenizer": vq_record, "ar": gpt_record}
    if vq_config.has_own_decoder:
        vq, record["decoder"] = stages.run(
            "3-decoder",
            lambda: refit_decoder(vq, vq_config, train, settings, progress=progress),
            lambda: VQModel(vq_config),
        )
        record["decoder"].update(_recon_errors(vq, sets, grid))
    return gpt, vq, record


@torch.no_grad()
def _recon_errors(
    vq: VQModel, sets: dict[str, tuple[torch.Tensor, torch.Tensor]], grid: tuple[int, int]
) -> dict[str, float]:
    """``<name>_recon_mse``: mean squared error of ``vq``'s decoding of each set's tokens
    against its images."""
    return {
        f"{name}_recon_mse": F.mse_loss(vq.decode_code(tokens, grid), images).item()
        for name, (tokens, images) in sets.items()
    }
