"""DD's training losses as plain functions (paper Eq. 7, App. C): testable without a Trainer.

``dd_loss = ce_weight * CE(logits, target tokens) + perceptual_weight * d(decode(emb), decode(q))``
on the positions the student predicts; the paper's weights are 0.1 and 1.0 and the perceptual
distance is LPIPS-VGG. ``teacher_kl`` is our optional third term
(``loss.teacher_kl_weight``). The image of the predicted embeddings goes through the frozen teacher
decoder (``Teacher.decode_embeddings``) so the gradient reaches the embedding head.

Perceptual distances take two image batches in ``[0, 1]`` and return ``[B]``:
- real teachers: :class:`LPIPSDistance` (the ``lpips`` package, VGG16 trunk from a local file);
- tiny teachers: :class:`dd.metrics.digits.DigitsPerceptual` (``feature_distance``: the digits
  classifier's features).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dd.baselines import teacher_forcing_log_probs
from dd.compute import autocast_off
from dd.trajectory import apply_prefix, data_mask, predicted_token_cross_entropy
from teachers.protocol import SamplingConfig, Teacher

PerceptualDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PAPER_CE_WEIGHT = 0.1  # DD App. C
PAPER_PERCEPTUAL_WEIGHT = 1.0
# torchvision's file name of the ImageNet VGG16 weights that LPIPS-VGG's trunk uses.
VGG16_FILE = "vgg16-397923af.pth"


def default_vgg16_path() -> Path:
    """Where torchvision itself caches the file: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


class LPIPSDistance(nn.Module):
    """LPIPS-VGG (v0.1): the package's calibrated linear layers, the VGG16 trunk read from a
    local torchvision state dict (``weights_only=True``). Frozen; differentiable in the images."""

    def __init__(self, vgg16_path: str | Path | None = None) -> None:
        super().__init__()
        import lpips  # the package's linear layers ship inside it; the trunk does not

        path = Path(vgg16_path) if vgg16_path is not None else default_vgg16_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS-VGG needs torchvision's ImageNet VGG16 weights, not found at {path}. "
                f"Copy {VGG16_FILE} (torchvision's vgg16 IMAGENET1K_V1 file) there, or pass its "
                "path (recipe: loss.vgg16_path), or train on the CE term alone: "
                "--loss.perceptual_weight 0 --student.split_token <sequence length> "
                "(docs/distillation.md). A random trunk is never used instead."
            )
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        trunk = {}
        for (
            name,
            _,
        ) in self.lpips.net.named_parameters():  # "slice3.10.weight" <- "features.10.weight"
            key = "features." + name.split(".", 1)[1]
            if key not in state:
                raise ValueError(f"{path} is not a torchvision VGG16 state dict (no {key!r})")
            trunk[name] = state[key]
        self.lpips.net.load_state_dict(trunk, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSDistance:
        """Always in eval mode: ``module.train()`` on the LightningModule would otherwise turn
        LPIPS' dropout (its linear layers') on inside the loss."""
        return super().train(False)

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        # float32 under bf16 autocast too: the loss is summed in float32 (bf16 LPIPS read
        # 0.3% off float32's on a random trunk)
        return self.lpips(images_a, images_b, normalize=True).flatten().float()


PerceptualKind = Literal["lpips_vgg", "digits"]


@dataclass(frozen=True)
class LossSettings:
    """A recipe's ``loss`` section: the weights of DD's loss terms (Eq. 7) and of ours."""

    perceptual: PerceptualKind = "lpips_vgg"
    """The perceptual distance: lpips_vgg (real teachers; the paper's LPIPS-VGG) or digits
    (tiny teachers; the digits classifier's features)."""
    vgg16_path: str | None = None
    """LPIPS-VGG's VGG16 trunk: torchvision's ImageNet weights file; null: torchvision's cache,
    ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    ce_weight: float = PAPER_CE_WEIGHT
    """Weight of the cross-entropy of the logits on the target tokens (Eq. 7; the paper's 0.1,
    App. C), >= 0."""
    perceptual_weight: float = PAPER_PERCEPTUAL_WEIGHT
    """Weight of the perceptual distance between the decoded predicted embeddings and the
    target tokens' image (Eq. 7; the paper's 1.0), >= 0. 0: not computed, its network not
    loaded (codebook teachers; continuous-token ones compute it whatever its weight)."""
    token_mse_weight: float = 0.0
    """Continuous-token teachers only (``dd.continuous``, #13): weight of the MSE on the
    tokens, >= 0."""
    teacher_kl_weight: float = 0.0
    """Our deviation, 0 in the paper: weight of the KL from the teacher's distribution of every
    predicted token (given the pair's earlier tokens) to the student's logits without the
    noise-logit prior (``teacher_kl``), >= 0; needs student.noise_logit_scale."""
    cache_teacher_kl_targets: bool = False
    """Compute the teacher-KL term's targets for every training pair once, before the first
    step, and serve them with the batches (``cached_teacher_log_probs``): they depend on the
    pair alone, and on llamagen-digits they are 0.3 of a step. Memory ``N x n x V`` float32
    (pairs x tokens x codebook; 4,000 pairs of llamagen-digits: 62 MB), refused over
    ``MAX_CACHED_TARGET_BYTES``. Off: one teacher-forcing forward per step (real teachers:
    V = 4,096 to 16,384 is far too big)."""

    def __post_init__(self) -> None:
        weights = {
            "ce_weight": self.ce_weight,
            "perceptual_weight": self.perceptual_weight,
            "token_mse_weight": self.token_mse_weight,
            "teacher_kl_weight": self.teacher_kl_weight,
        }
        for name, value in weights.items():
            if not value >= 0:  # a negative weight would climb its term
                raise ValueError(f"loss.{name} must be >= 0, got {value}")


def build_perceptual(settings: LossSettings) -> PerceptualDistance:
    if settings.perceptual == "lpips_vgg":
        return LPIPSDistance(settings.vgg16_path)
    if settings.perceptual == "digits":
        from dd.metrics.digits import DigitsPerceptual

        return DigitsPerceptual()
    raise ValueError(
        f"loss.perceptual must be 'lpips_vgg' or 'digits', got {settings.perceptual!r}"
    )


@dataclass(frozen=True)
class LossTerms:
    total: torch.Tensor
    cross_entropy: torch.Tensor
    perceptual: torch.Tensor


def dd_loss(
    teacher: Teacher,
    logits_BNV: torch.Tensor,
    embeddings_BNC: torch.Tensor,
    target_BN: torch.Tensor,
    boundary_B: torch.Tensor,
    perceptual: PerceptualDistance | None,
    *,
    ce_weight: float = PAPER_CE_WEIGHT,
    perceptual_weight: float = PAPER_PERCEPTUAL_WEIGHT,
) -> LossTerms:
    """Eq. 7 with the paper's two heads: CE on the predicted positions, and the perceptual
    distance between the decoded predicted embeddings (prefix positions are the given codes,
    Eq. 6) and the image of the target tokens. No clamping on the gradient path."""
    codebook = teacher.codebook
    target_codes_BNC = codebook[target_BN]
    # Eq. 6 for the embedding path: positions before the boundary hold the target's codes.
    _, embeddings_BNC = apply_prefix(
        logits_BNV, embeddings_BNC, target_codes_BNC, target_BN, boundary_B
    )
    cross_entropy = predicted_token_cross_entropy(logits_BNV, target_BN, boundary_B)
    if perceptual_weight == 0:  # nothing to weigh: no decoder, no distance (CE-only training)
        zero = cross_entropy.new_zeros(())
        return LossTerms(ce_weight * cross_entropy, cross_entropy.detach(), zero)
    predicted_images = teacher.decode_embeddings(embeddings_BNC.to(codebook.dtype))
    with torch.no_grad():
        target_images = teacher.decode_tokens(target_BN)
    perceptual_term = perceptual(predicted_images, target_images).mean()
    total = ce_weight * cross_entropy + perceptual_weight * perceptual_term
    return LossTerms(total, cross_entropy.detach(), perceptual_term.detach())


@torch.no_grad()
def teacher_log_probs(
    teacher: Teacher, labels_B: torch.Tensor, tokens_BN: torch.Tensor, sampling: SamplingConfig
) -> torch.Tensor:
    """The teacher's guided ``log p_i`` ``[B, n, V]`` of every token given the earlier tokens of
    ``tokens`` (teacher forcing under the pairs' own ``sampling``: the distributions AR flow
    matching mapped the pairs' noise through), in one parallel forward
    (``dd.baselines.teacher_forcing_log_probs``).

    float32 with autocast off, whatever the training precision: the per-step targets are
    computed inside the training step, under ``bf16-mixed``'s autocast, and the cached ones
    before it (``cached_teacher_log_probs``); in bf16 they were up to 1.04 off the float32
    ones on 8 llamagen-digits pairs (``tests/test_losses.py``). On a GPU the forward then
    costs float32's time (the real-teacher recipes leave the term off)."""
    with autocast_off(tokens_BN.device):
        return teacher_forcing_log_probs(teacher, labels_B, tokens_BN, sampling).float()


MAX_CACHED_TARGET_BYTES = 2 * 2**30


@torch.no_grad()
def cached_teacher_log_probs(
    teacher: Teacher,
    labels_B: torch.Tensor,
    tokens_BN: torch.Tensor,
    sampling: SamplingConfig,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """``teacher_log_probs`` of every pair ``[N, n, V]`` float32 on the CPU, in batches of
    ``batch_size`` (``loss.cache_teacher_kl_targets``). Row ``i`` is the same function of
    pair ``i`` as the per-step targets; only float round-off of the batch's shape differs."""
    num_pairs, num_tokens = tokens_BN.shape
    needed = num_pairs * num_tokens * teacher.vocab_size * 4
    if needed > MAX_CACHED_TARGET_BYTES:
        raise ValueError(
            f"caching the teacher-KL targets of {num_pairs} pairs takes {needed / 2**30:.1f} GiB "
            f"([{num_pairs}, {num_tokens}, {teacher.vocab_size}] float32), over the "
            f"{MAX_CACHED_TARGET_BYTES / 2**30:.0f} GiB limit: set loss.cache_teacher_kl_targets "
            "false (one teacher forward per step instead)"
        )
    from tqdm.auto import tqdm

    device = teacher.codebook.device
    targets = torch.empty(num_pairs, num_tokens, teacher.vocab_size)
    starts = range(0, num_pairs, batch_size)
    for start in tqdm(starts, desc="teacher-KL targets", disable=not progress, leave=False):
        rows = slice(start, start + batch_size)
        log_p = teacher_log_probs(
            teacher, labels_B[rows].to(device), tokens_BN[rows].to(device), sampling
        )
        targets[rows] = log_p.float().cpu()
    return targets


def teacher_kl(
    trunk_logits_BNV: torch.Tensor,
    teacher_log_probs_BNV: torch.Tensor,
    boundary_B: torch.Tensor,
    num_predicted: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``KL(p_i || softmax(trunk_i))`` summed over every predicted position of the batch and
    divided by ``num_predicted`` (``None``: the batch's own number of predicted positions, so
    the mean over them).

    ``num_predicted`` is for DDP (``DistillModule.kl_normaliser``): a sample has as many
    predicted positions as its timestep leaves (64 or 44 on llamagen-digits), so ranks' counts
    differ, and DDP averages the ranks' gradients: each rank divides by the global count over
    the world size, and the average is the global batch's mean whatever the split.

    Why (our deviation from the paper): with the noise-logit prior the student's logits of token
    ``i`` are ``trunk_i + kappa <eps_i, c>`` and the flow map's rule is
    ``argmax(log p_i + kappa <eps_i, c>)``, so the trunk's target is ``log p_i``, a function of
    the earlier tokens that the teacher gives whole. The CE term sees one token drawn from it;
    this term sees all of it (docs/distillation.md, "Teacher-aligned readout and the teacher-KL
    term")."""
    predicted_BN = ~data_mask(boundary_B, trunk_logits_BNV.shape[1])
    target_BNV = teacher_log_probs_BNV.float()
    # Filtered codes (top-k / top-p) have p = 0 and log p = -inf: they add nothing.
    kl_BN = (
        target_BNV.exp() * (target_BNV.clamp_min(-1e30) - torch.log_softmax(trunk_logits_BNV, -1))
    ).sum(-1)
    if num_predicted is None:
        num_predicted = predicted_BN.sum()
    return torch.where(predicted_BN, kl_BN, torch.zeros_like(kl_BN)).sum() / num_predicted
