"""Stage 2 on Lightning: the distillation system (paper Alg. 2) and its data module.

``DistillModule`` composes the plain pieces: ``dd.trajectory`` (Eq. 5), ``DDStudent`` (Eq. 6),
``dd.losses.dd_loss`` (Eq. 7). It owns the optimiser (AdamW, betas 0.9 / 0.95) and logs both
loss terms and held-out token agreement with the teacher's tokens. EMA, gradient clipping,
precision and the distributed strategy are the Trainer's (``EMAWeightAveraging``,
``gradient_clip_val``, ``precision``, ``strategy``), set by the recipe.

``PairDataModule`` serves ``dd.data.PairBatches`` from the step the trainer resumes at, so a
resumed run sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from dd.data import BatchOrder, PairBatches, PairSet
from dd.losses import LossSettings, PerceptualDistance, dd_loss, teacher_kl, teacher_log_probs
from dd.sampling import choose_tokens
from dd.student import DDStudent
from dd.trajectory import data_mask, trajectory_input
from teachers.protocol import SamplingConfig

PAPER_BETAS = (0.9, 0.95)  # DD App. C


@dataclass(frozen=True)
class OptimSettings:
    """A recipe's ``optim`` section: AdamW (betas 0.9, 0.95; DD App. C) and its rate schedule."""

    lr: float = 1e-4
    """Learning rate per lr_reference_batch samples; the used rate scales linearly with the
    global batch (VAR in the paper: 1e-4 per 256)."""
    lr_reference_batch: int = 256
    """The batch size lr is given for; 0 keeps lr fixed whatever the batch (LlamaGen in the
    paper)."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""
    schedule: Literal["constant", "cosine"] = "constant"
    """constant (the paper) or cosine (from the rate down to 0 at the run's last step, after
    warmup_steps of linear warm-up): short runs such as the demo's end annealed rather than
    mid-noise (docs/distillation.md, "LR schedule")."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up from lr / warmup_steps to lr, >= 0 (either schedule;
    cosine needs run.max_steps above it)."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        # A rate of 0 trained nothing and saved the initial student as if distilled; AdamW
        # refused a negative one only once the run had loaded its pairs.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.lr_reference_batch < 0 or self.weight_decay < 0:
            raise ValueError(
                f"optim.lr_reference_batch ({self.lr_reference_batch}) and optim.weight_decay "
                f"({self.weight_decay}) must be >= 0"
            )

    def check_length(self, total_steps: int) -> None:
        """The cosine schedule decays to 0 at the run's last step, after the warm-up."""
        if self.schedule == "cosine" and total_steps <= self.warmup_steps:
            raise ValueError(
                f"optim.schedule cosine decays to 0 at run.max_steps, which must be above "
                f"optim.warmup_steps: got {total_steps} and {self.warmup_steps}"
            )

    def scaled_lr(self, global_batch_size: int) -> float:
        if self.lr_reference_batch == 0:
            return self.lr
        return self.lr * global_batch_size / self.lr_reference_batch

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The multiplier of the rate at optimiser step ``step`` (0-based) of ``total_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# The frozen parts of the module: the teacher and the perceptual network (when a module).
FROZEN_PREFIXES = ("student.teacher.", "perceptual.")
# Where a training checkpoint holds module states: Lightning's, and EMAWeightAveraging's copy
# of the current (not averaged) weights.
MODULE_STATE_KEYS = ("state_dict", "current_model_state")


class DistillModule(pl.LightningModule):
    logs_perceptual = False  # the distance is computed (and logged) only when it is weighed

    def __init__(
        self,
        student: DDStudent,
        perceptual: PerceptualDistance | None,
        optim: OptimSettings,
        loss: LossSettings,
        global_batch_size: int,
        pair_sampling: SamplingConfig | None = None,
    ) -> None:
        """``pair_sampling``: the teacher's sampling settings the pairs were made with
        (``dd.data.pair_sampling``); needed by the teacher-KL term only. ``perceptual`` may be
        ``None`` when ``loss.perceptual_weight`` is 0 (the term is then never computed)."""
        super().__init__()
        self.check_settings(student, loss, pair_sampling)
        if perceptual is None and (loss.perceptual_weight != 0 or self.logs_perceptual):
            raise ValueError(
                f"loss.perceptual_weight is {loss.perceptual_weight}, but no perceptual "
                f"distance was given{' (validation logs it)' if self.logs_perceptual else ''}"
            )
        self.student, self.perceptual, self.pair_sampling = student, perceptual, pair_sampling
        self.optim, self.loss, self.global_batch_size = optim, loss, global_batch_size
        boundaries = [student.geometry.step_ranges[k][0] for k in student.timesteps]
        self.register_buffer("boundaries", torch.tensor(boundaries), persistent=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Training checkpoints leave out the frozen teacher and perceptual network (twice over
        with the EMA's copy: 912,545 of var-digits' 1,642,042 saved elements per copy were the
        teacher's). They are rebuilt from the recipe, and the pairs check the teacher's
        fingerprint."""
        for key in MODULE_STATE_KEYS:
            if key in checkpoint:
                checkpoint[key] = {
                    name: value
                    for name, value in checkpoint[key].items()
                    if not name.startswith(FROZEN_PREFIXES)
                }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Put the live frozen parts back, so that the states load strictly (runs before the
        module's and the EMA callback's loading)."""
        frozen = {
            name: value
            for name, value in self.state_dict().items()
            if name.startswith(FROZEN_PREFIXES)
        }
        for key in MODULE_STATE_KEYS:
            if key in checkpoint:
                checkpoint[key] = {**checkpoint[key], **frozen}

    @staticmethod
    def check_settings(
        student: DDStudent, loss: LossSettings, pair_sampling: SamplingConfig | None = None
    ) -> None:
        """With ``perceptual_weight`` 0 the embedding head learns nothing (``dd_loss`` then skips
        the decoder), and with no CE and no teacher-KL term the logits head learns nothing:
        refuse a split that would sample from either. The teacher-KL term needs the noise-logit
        prior (it trains the logits without it) and the pairs' sampling settings."""
        if loss.ce_weight == 0 and loss.teacher_kl_weight == 0 and student.split_token > 0:
            raise ValueError(
                f"loss.ce_weight and loss.teacher_kl_weight are 0, so the logits head is never "
                f"trained, but student.split_token is {student.split_token}: tokens before it "
                "would come from that head. Set student.split_token to 0 (the embedding head "
                "everywhere) or give the CE term a weight"
            )
        if loss.teacher_kl_weight > 0 and student.noise_logit_scale is None:
            raise ValueError(
                "loss.teacher_kl_weight > 0 trains the student's logits without the noise-logit "
                "prior towards the teacher's log p; set student.noise_logit_scale (the flow "
                "map's kappa, e.g. 2.5) or the weight to 0"
            )
        if loss.teacher_kl_weight > 0 and pair_sampling is None:
            raise ValueError("loss.teacher_kl_weight > 0 needs the pairs' sampling settings")
        if loss.cache_teacher_kl_targets and loss.teacher_kl_weight == 0:
            raise ValueError(
                "loss.cache_teacher_kl_targets caches the teacher-KL term's targets, but "
                "loss.teacher_kl_weight is 0: set the weight or turn the cache off"
            )
        if loss.perceptual_weight == 0 and student.split_token < student.geometry.num_tokens:
            raise ValueError(
                f"loss.perceptual_weight is 0, so the embedding head is never trained, but "
                f"student.split_token is {student.split_token}: tokens from it on would come "
                f"from that head. Set student.split_token to {student.geometry.num_tokens} "
                "(the logits head everywhere) or give the perceptual term a weight"
            )

    def _predict(self, batch: dict[str, torch.Tensor], *, with_trunk: bool = False):
        """``(logits, embeddings, boundary, trunk logits or None)``; the trunk logits (without
        the noise-logit prior) only ``with_trunk``."""
        student = self.student
        boundary = self.boundaries[batch["timestep_choice"]]
        inputs = trajectory_input(
            batch["noise"], batch["tokens"], student.teacher.codebook, boundary
        )
        if not with_trunk:
            logits, embeddings = student(batch["labels"], inputs, boundary, batch["tokens"])
            return logits, embeddings, boundary, None
        trunk, embeddings = student(
            batch["labels"], inputs, boundary, batch["tokens"], noise_logit_scale=0.0
        )
        predicted_BN1 = ~data_mask(boundary, inputs.shape[1]).unsqueeze(-1)
        logits = torch.where(predicted_BN1, trunk + student.noise_logit_prior(inputs), trunk)
        return logits, embeddings, boundary, trunk

    def training_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        kl_weight = self.loss.teacher_kl_weight
        logits, embeddings, boundary, trunk = self._predict(batch, with_trunk=kl_weight > 0)
        terms = dd_loss(
            self.student.teacher,
            logits,
            embeddings,
            batch["tokens"],
            boundary,
            self.perceptual,
            ce_weight=self.loss.ce_weight,
            perceptual_weight=self.loss.perceptual_weight,
        )
        total, logged = terms.total, {}
        if kl_weight > 0:
            target = self._teacher_kl_target(batch)
            normaliser = self.kl_normaliser(boundary, trunk.shape[1])
            kl = teacher_kl(trunk, target, boundary, num_predicted=normaliser)
            total, logged = total + kl_weight * kl, {"train/teacher_kl": kl.detach()}
        self.log_dict(
            {
                "train/loss": total.detach(),
                "train/cross_entropy": terms.cross_entropy,
                "train/perceptual": terms.perceptual,
                **logged,
            },
            prog_bar=True,
            sync_dist=False,
        )
        return {
            "loss": total,
            "cross_entropy": terms.cross_entropy,
            "perceptual": terms.perceptual,
        }

    @staticmethod
    def kl_normaliser(boundary_B: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """What this rank divides its summed teacher-KL by (``teacher_kl``'s ``num_predicted``):
        the global batch's number of predicted positions over the world size, all-reduced each
        step. DDP averages the ranks' gradients, so the ranks' terms then average to the mean
        over the global batch, the one-process loss. A rank's own mean instead weighs its
        positions by 1 / its count, which depends on how the timesteps fell between the ranks
        (a sample has 64 or 44 predicted positions on llamagen-digits). One process: this
        batch's count itself, the int64 tensor ``teacher_kl`` divided by before this existed,
        so one-process training is the same to the bit."""
        count = (~data_mask(boundary_B, num_tokens)).sum()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_world_size() == 1:
            return count
        total = count.clone()  # all_reduce works in place
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total / torch.distributed.get_world_size()

    def _teacher_kl_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's ``log p`` of the batch's pairs: served with the batch when cached
        (``loss.cache_teacher_kl_targets``), else one teacher-forcing forward now."""
        if not self.loss.cache_teacher_kl_targets:
            return teacher_log_probs(
                self.student.teacher, batch["labels"], batch["tokens"], self.pair_sampling
            )
        if "teacher_log_probs" not in batch:
            raise KeyError(
                "loss.cache_teacher_kl_targets is on but the batch has no 'teacher_log_probs': "
                "give PairDataModule the cached targets"
            )
        return batch["teacher_log_probs"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Held-out token agreement with the teacher's tokens at every training timestep."""
        for choice, step in enumerate(self.student.timesteps):
            chosen = torch.full_like(batch["labels"], choice)
            logits, embeddings, boundary, _ = self._predict({**batch, "timestep_choice": chosen})
            predicted = choose_tokens(self.student, logits, embeddings)
            start = int(boundary[0])
            agreement = (predicted[:, start:] == batch["tokens"][:, start:]).float().mean()
            self.log(f"val/token_agreement_step{step}", agreement, sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.student.trainable_parameters(),
            lr=self.optim.scaled_lr(self.global_batch_size),
            betas=PAPER_BETAS,
            weight_decay=self.optim.weight_decay,
        )
        if self.optim.schedule == "constant" and self.optim.warmup_steps == 0:
            return optimizer
        total_steps = self.trainer.max_steps
        self.optim.check_length(total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.optim.lr_factor(step, total_steps)
        )
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


class PairDataModule(pl.LightningDataModule):
    """Training batches from ``dd.data.BatchOrder``; the held-out pairs in order for validation."""

    def __init__(
        self,
        train: PairSet,
        heldout: PairSet,
        *,
        global_batch_size: int,
        num_timesteps: int,
        seed: int,
        heldout_batch_size: int = 64,
        teacher_log_probs: torch.Tensor | None = None,
    ) -> None:
        """``teacher_log_probs``: the cached teacher-KL targets of ``train``, row by row."""
        super().__init__()
        self.train_pairs, self.heldout_pairs = train, heldout
        self.teacher_log_probs = teacher_log_probs
        self.order = BatchOrder(len(train), global_batch_size, num_timesteps, seed)
        self.heldout_batch_size = heldout_batch_size

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        batches = PairBatches(
            self.train_pairs,
            self.order,
            start_step=trainer.global_step,  # restored from the checkpoint before this call
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            teacher_log_probs=self.teacher_log_probs,
        )
        return DataLoader(batches, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            HeldOutRows(self.heldout_pairs), batch_size=self.heldout_batch_size, shuffle=False
        )


class HeldOutRows(torch.utils.data.Dataset):
    """The held-out pairs row by row, the noise cast to float32 as each row is read: a list
    of every row made float32 copies of float16 noise up front (about 830 MB per process for
    VAR-d16's 10,000 held-out pairs, mapped or not)."""

    def __init__(self, pairs: PairSet) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pairs = self.pairs
        return {
            "labels": pairs.labels[i],
            "noise": pairs.noise[i].float(),
            "tokens": pairs.tokens[i],
        }
