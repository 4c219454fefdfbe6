"""DD's losses (dd/losses.py) as plain functions: LPIPS-VGG loading and its errors, the two-term
loss on real pairs of a tiny teacher, and a short real optimisation that lowers both terms."""

import pytest
import torch
from torch import nn

from data_gen.config import FlowSettings
from data_gen.pairs import map_noise
from dd import losses
from dd.distill import DistillModule, OptimSettings
from dd.losses import (
    VGG16_FILE,
    LossSettings,
    LPIPSDistance,
    cached_teacher_log_probs,
    dd_loss,
    teacher_kl,
    teacher_log_probs,
)
from dd.metrics.digits import feature_distance
from dd.student import DDStudent
from dd.trajectory import data_mask, step_boundaries, trajectory_input
from teachers.tiny import load_tiny_teacher, tiny_sampling

# The features part of torchvision's VGG16 layout: conv layer indices and channel widths.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256),
               12: (256, 256), 14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512),
               24: (512, 512), 26: (512, 512), 28: (512, 512)}  # fmt: skip


def test_lpips_without_the_vgg_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / VGG16_FILE
    with pytest.raises(FileNotFoundError, match=VGG16_FILE) as info:
        LPIPSDistance(missing)
    assert str(missing) in str(info.value)
    assert "--loss.perceptual_weight 0 --student.split_token <sequence length>" in str(info.value)


def test_lpips_refuses_a_file_that_is_not_vgg16(tmp_path):
    path = tmp_path / VGG16_FILE
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        LPIPSDistance(path)


def test_lpips_loads_a_vgg16_state_dict_and_measures_distance(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {}
    for index, (c_in, c_out) in VGG16_CONVS.items():
        std = (2 / (9 * c_in)) ** 0.5
        state[f"features.{index}.weight"] = (
            torch.randn(c_out, c_in, 3, 3, generator=generator) * std
        )
        state[f"features.{index}.bias"] = torch.zeros(c_out)
    path = tmp_path / VGG16_FILE
    torch.save(state, path)
    distance = LPIPSDistance(path)
    assert torch.equal(getattr(distance.lpips.net.slice3, "10").weight, state["features.10.weight"])
    assert not any(p.requires_grad for p in distance.parameters())
    distance.train()  # frozen: LPIPS' dropout stays off
    assert not any(m.training for m in distance.modules())
    images = torch.rand(2, 3, 32, 32, generator=generator)
    other = torch.rand(2, 3, 32, 32, generator=generator, requires_grad=True)
    assert torch.allclose(distance(images, images), torch.zeros(2), atol=1e-6)
    far = distance(images, other)
    assert far.shape == (2,) and (far > 1e-3).all()
    far.sum().backward()
    assert other.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: the distance stays float32
        mixed = distance(images, other.detach())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, far.detach(), rtol=0.02, atol=0)  # bf16's trunk: ~0.3%


@pytest.fixture(scope="module")
def tiny_pairs():
    teacher = load_tiny_teacher("llamagen-digits")
    generator = torch.Generator().manual_seed(0)
    batch = 8
    labels = torch.arange(batch) % teacher.num_classes
    noise = torch.randn(batch, teacher.geometry.num_tokens, teacher.code_dim, generator=generator)
    tokens = map_noise(teacher, labels, noise, tiny_sampling("llamagen-digits"), FlowSettings())
    return teacher, labels, noise, tokens


def test_dd_loss_terms_and_gradient_paths(tiny_pairs):
    teacher, labels, noise, tokens = tiny_pairs
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, 20), 20)
    boundary = step_boundaries((0, 20), teacher.geometry).repeat(4)
    inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
    logits, embeddings = student(labels, inputs, boundary, tokens)
    terms = dd_loss(teacher, logits, embeddings, tokens, boundary, feature_distance)
    assert terms.cross_entropy > 0 and terms.perceptual > 0
    torch.testing.assert_close(terms.total, 0.1 * terms.cross_entropy + terms.perceptual)
    terms.total.backward()
    head = student.backbone.embedding_out.weight.grad
    assert head is not None and head.abs().sum() > 0  # the perceptual term reaches it
    assert not any(p.grad is not None for p in teacher.parameters())


def test_a_zero_perceptual_weight_skips_the_decoder_and_is_refused_with_an_embedding_split(
    tiny_pairs,
):
    teacher, labels, noise, tokens = tiny_pairs
    torch.manual_seed(0)
    n = teacher.geometry.num_tokens
    student = DDStudent(teacher, (0, 20), n)
    boundary = step_boundaries((0, 20), teacher.geometry).repeat(4)
    inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
    logits, embeddings = student(labels, inputs, boundary, tokens)

    def never(*images):
        raise AssertionError("the perceptual distance ran with weight 0")

    terms = dd_loss(teacher, logits, embeddings, tokens, boundary, never, perceptual_weight=0.0)
    full = dd_loss(teacher, logits, embeddings, tokens, boundary, feature_distance)
    torch.testing.assert_close(terms.cross_entropy, full.cross_entropy)
    torch.testing.assert_close(terms.total, 0.1 * full.cross_entropy)
    assert terms.perceptual == 0
    settings = LossSettings("digits", perceptual_weight=0.0)
    optim = OptimSettings(lr=1e-3, lr_reference_batch=0)
    DistillModule(student, never, optim, settings, 4)  # logits head everywhere: accepted
    with pytest.raises(ValueError, match="embedding head is never trained"):
        DistillModule(DDStudent(teacher, (0, 20), 20), never, optim, settings, 4)
    no_ce = LossSettings("digits", ce_weight=0.0)  # the mirror: the logits head learns nothing
    DistillModule(DDStudent(teacher, (0, 20), 0), never, optim, no_ce, 4)  # embedding head only
    with pytest.raises(ValueError, match="logits head is never trained"):
        DistillModule(DDStudent(teacher, (0, 20), 20), never, optim, no_ce, 4)


def test_a_short_real_optimisation_lowers_both_losses(tiny_pairs):
    """40 AdamW steps on 8 real pairs (both training timesteps): each term must fall by at
    least 20% (measured on this machine: CE 5.77 -> 1.94, perceptual 3.30 -> 0.02)."""
    teacher, labels, noise, tokens = tiny_pairs
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, 20), 20)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.9, 0.95))
    boundary = step_boundaries((0, 20), teacher.geometry).repeat(4)
    inputs = trajectory_input(noise, tokens, teacher.codebook, boundary)
    history = []
    for _ in range(40):
        logits, embeddings = student(labels, inputs, boundary, tokens)
        terms = dd_loss(teacher, logits, embeddings, tokens, boundary, feature_distance)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        history.append((terms.cross_entropy.item(), terms.perceptual.item()))
    (ce_first, lp_first), (ce_last, lp_last) = history[0], history[-1]
    message = f"CE {ce_first:.3f} -> {ce_last:.3f}, perceptual {lp_first:.3f} -> {lp_last:.3f}"
    assert ce_last < 0.8 * ce_first, message
    assert lp_last < 0.8 * lp_first, message


def test_teacher_log_probs_are_what_the_pairs_were_mapped_through(tiny_pairs):
    """Teacher forcing gives normalised ``log p_i`` of every token (1e-5), and the flow map's
    one-parameter rule ``argmax(log p_i + 2.5 <eps_i, c>)`` on them reproduces most of the
    pairs' tokens (docs/distillation.md measured ~89%; here over 512 tokens, at least 75%),
    far more than the same rule without ``log p`` (measured here: 89.8% and 2.0%)."""
    teacher, labels, noise, tokens = tiny_pairs
    log_p = teacher_log_probs(teacher, labels, tokens, tiny_sampling("llamagen-digits"))
    assert log_p.shape == (*tokens.shape, teacher.vocab_size)
    torch.testing.assert_close(log_p.logsumexp(-1), torch.zeros(tokens.shape), atol=1e-5, rtol=0)
    similarity = 2.5 * noise @ teacher.codebook.T
    with_p = ((log_p + similarity).argmax(-1) == tokens).float().mean()
    without_p = (similarity.argmax(-1) == tokens).float().mean()
    assert with_p > 0.75 and without_p < 0.3, (with_p, without_p)


def test_cached_targets_are_the_per_batch_targets_and_refuse_a_cache_too_big(
    tiny_pairs, monkeypatch
):
    """``cached_teacher_log_probs`` in uneven batches of 3 equals ``teacher_log_probs`` of the
    whole batch (float32 round-off of another batch shape: 1e-5); over the byte limit it raises
    before computing, naming the size and the setting."""
    teacher, labels, _, tokens = tiny_pairs
    sampling = tiny_sampling("llamagen-digits")
    cached = cached_teacher_log_probs(teacher, labels, tokens, sampling, batch_size=3)
    expected = teacher_log_probs(teacher, labels, tokens, sampling)
    assert cached.dtype == torch.float32 and cached.shape == expected.shape
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)
    needed = tokens.numel() * teacher.vocab_size * 4
    monkeypatch.setattr(losses, "MAX_CACHED_TARGET_BYTES", needed - 1)
    with pytest.raises(ValueError, match=r"\[8, 64, 64\] float32.*cache_teacher_kl_targets"):
        losses.cached_teacher_log_probs(teacher, labels, tokens, sampling)


def test_the_teacher_kl_path_stays_float32_under_bf16_autocast(tiny_pairs):
    """``bf16-mixed`` runs the training step under autocast. The teacher-KL path adds the
    noise-logit prior out of place (``DDStudent.noise_logit_prior``), the plain path in place
    (float32: autocast leaves in-place ops alone). The prior is the float32 one to the bit, and
    both paths' logits agree at the predicted positions to float32 round-off (1e-4; the prior
    in bf16 was up to 0.058 off). The per-step targets are float32 and equal the cached ones, which
    are computed before training, outside autocast (1e-5; in bf16 they were up to 1.04 off)."""
    teacher, labels, noise, tokens = tiny_pairs
    sampling = tiny_sampling("llamagen-digits")
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, 20), 64, noise_logit_scale=2.5)
    settings = LossSettings("digits", teacher_kl_weight=1.0)
    module = DistillModule(student, feature_distance, OptimSettings(), settings, 8, sampling)
    choice_B = torch.arange(len(labels)) % 2
    batch = {"labels": labels, "noise": noise, "tokens": tokens, "timestep_choice": choice_B}
    boundary_B = step_boundaries((0, 20), teacher.geometry)[choice_B]
    inputs_BNC = trajectory_input(noise, tokens, teacher.codebook, boundary_B)
    cached_BNV = cached_teacher_log_probs(teacher, labels, tokens, sampling)
    with torch.no_grad():
        prior_BNV = student.noise_logit_prior(inputs_BNC)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed_prior_BNV = student.noise_logit_prior(inputs_BNC)
            with_kl_BNV, _, boundary, _ = module._predict(batch, with_trunk=True)
            plain_BNV = module._predict(batch)[0]
            per_step_BNV = module._teacher_kl_target(batch)
    assert torch.equal(boundary, boundary_B)
    assert mixed_prior_BNV.dtype == torch.float32 and torch.equal(mixed_prior_BNV, prior_BNV)
    predicted_BN = ~data_mask(boundary_B, tokens.shape[1])
    torch.testing.assert_close(
        with_kl_BNV[predicted_BN], plain_BNV[predicted_BN], atol=1e-4, rtol=1e-5
    )
    assert per_step_BNV.dtype == torch.float32
    torch.testing.assert_close(per_step_BNV, cached_BNV, atol=1e-5, rtol=1e-5)


def test_teacher_kl_is_zero_at_the_teacher_and_ignores_the_prefix():
    """KL(p || softmax(trunk)) over predicted positions: 0 when the trunk is log p up to a
    constant (1e-6), positive otherwise, blind to positions before the boundary, finite where
    p has filtered (-inf) codes, and its gradient reaches the trunk there."""
    generator = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(2, 6, 5, generator=generator), -1)
    log_p[:, :, 0] = float("-inf")  # a filtered code (top-k / top-p)
    log_p = torch.log_softmax(log_p, -1)
    boundary = torch.tensor([0, 3])
    trunk = log_p.clamp_min(-30) + 7.0
    assert abs(float(teacher_kl(trunk, log_p, boundary))) < 1e-6
    other = torch.randn(2, 6, 5, generator=generator, requires_grad=True)
    kl = teacher_kl(other, log_p, boundary)
    assert kl > 0 and torch.isfinite(kl)
    kl.backward()
    assert torch.isfinite(other.grad).all() and other.grad[1, :3].abs().max() == 0
    changed = other.detach().clone()
    changed[1, :3] = 100.0  # sample 1's prefix
    torch.testing.assert_close(teacher_kl(changed, log_p, boundary), kl.detach())


def test_teacher_kl_over_the_global_count_makes_two_ranks_one_batch():
    """DDP averages the ranks' gradients. Two ranks of 4 samples whose timesteps differ (196 and
    236 predicted positions of 64 or 44 each) that divide their summed KL by the global count
    over the world size (216, ``DistillModule.kl_normaliser``) average to the whole batch's mean
    KL and its gradient (float32 round-off); their own means (the code before) do not. In one
    process the normaliser is the batch's own int64 count, the same loss to the bit."""
    generator = torch.Generator().manual_seed(0)
    num_tokens, vocab = 64, 16
    log_p_BNV = torch.log_softmax(torch.randn(8, num_tokens, vocab, generator=generator), -1)
    trunk_BNV = torch.randn(8, num_tokens, vocab, generator=generator, requires_grad=True)
    boundary_B = torch.tensor([0, 20, 20, 20, 0, 0, 0, 20])
    whole = teacher_kl(trunk_BNV, log_p_BNV, boundary_B)
    (whole_grad,) = torch.autograd.grad(whole, trunk_BNV)
    ranks = (slice(0, 4), slice(4, 8))
    global_count = sum((num_tokens - boundary_B[r]).sum() for r in ranks)  # 196 + 236
    per_rank_count = global_count / len(ranks)
    normalised = [
        teacher_kl(trunk_BNV[r], log_p_BNV[r], boundary_B[r], num_predicted=per_rank_count)
        for r in ranks
    ]
    averaged = sum(normalised) / len(ranks)
    (averaged_grad,) = torch.autograd.grad(averaged, trunk_BNV)
    torch.testing.assert_close(averaged, whole, rtol=1e-6, atol=0)
    torch.testing.assert_close(averaged_grad, whole_grad, rtol=1e-5, atol=1e-9)
    own_means = sum(teacher_kl(trunk_BNV[r], log_p_BNV[r], boundary_B[r]) for r in ranks) / 2
    (own_grad,) = torch.autograd.grad(own_means, trunk_BNV)
    assert (own_grad - whole_grad).abs().max() > 0.05 * whole_grad.abs().max()
    # One process: the module's normaliser is the count teacher_kl takes by itself.
    count = DistillModule.kl_normaliser(boundary_B, num_tokens)
    assert count.dtype == torch.int64 and int(count) == int(global_count)
    same = teacher_kl(trunk_BNV, log_p_BNV, boundary_B, num_predicted=count)
    assert torch.equal(same, whole)


def test_the_teacher_kl_term_needs_the_noise_logit_prior_and_lowers_under_optimisation(
    tiny_pairs,
):
    """Refused without the prior or without the pairs' sampling; with them, 30 AdamW steps on
    the whole loss (CE, perceptual, KL weight 1) on 8 real pairs lower the KL by at least 20%
    (measured here: 5.94 -> 0.16)."""
    teacher, labels, noise, tokens = tiny_pairs
    sampling = tiny_sampling("llamagen-digits")
    optim = OptimSettings(lr=1e-3, lr_reference_batch=0)
    settings = LossSettings("digits", teacher_kl_weight=1.0)
    with pytest.raises(ValueError, match="student.noise_logit_scale"):
        DistillModule(
            DDStudent(teacher, (0, 20), 64), feature_distance, optim, settings, 4, sampling
        )
    torch.manual_seed(0)
    student = DDStudent(teacher, (0, 20), 64, noise_logit_scale=2.5)
    with pytest.raises(ValueError, match="sampling settings"):
        DistillModule(student, feature_distance, optim, settings, 4)
    module = DistillModule(student, feature_distance, optim, settings, 4, sampling)
    module.log_dict = lambda *args, **kwargs: None  # no Trainer here
    optimizer = torch.optim.AdamW(student.trainable_parameters(), lr=1e-3, betas=(0.9, 0.95))
    batch = {"labels": labels, "noise": noise, "tokens": tokens}
    batch["timestep_choice"] = torch.arange(len(labels)) % 2
    target = teacher_log_probs(teacher, labels, tokens, sampling)
    history = []
    for _ in range(30):
        _, _, boundary, trunk = module._predict(batch, with_trunk=True)
        history.append(teacher_kl(trunk, target, boundary).item())
        loss = module.training_step(batch, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert history[-1] < 0.8 * history[0], (history[0], history[-1])


def test_the_digits_perceptual_term_moves_with_the_module_and_measures_the_same():
    """Lightning puts the LightningModule on the GPU with ``.to(device)``: the tiny recipes'
    perceptual network must go with it (a bare function kept the classifier on the CPU, so
    the first step on a GPU met CPU weights). The meta device stands in for CUDA. Its distance
    is ``feature_distance``'s, to the bit."""
    perceptual = losses.build_perceptual(LossSettings("digits"))
    generator = torch.Generator().manual_seed(0)
    images_a, images_b = torch.rand(2, 4, 3, 16, 16, generator=generator)
    assert torch.equal(perceptual(images_a, images_b), feature_distance(images_a, images_b))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: summed in float32, as LPIPS
        mixed = perceptual(images_a, images_b)
    assert mixed.dtype == torch.float32
    teacher = load_tiny_teacher("llamagen-digits")
    student = DDStudent(teacher, (0, 20), 64)
    module = DistillModule(student, perceptual, OptimSettings(), LossSettings("digits"), 4)
    assert not any(p.requires_grad for p in perceptual.parameters())
    module.train()  # frozen: its dropout stays off whatever the module around it does
    assert not any(m.training for m in perceptual.modules())
    assert module.student.backbone.training
    module.to("meta")
    moved = list(module.perceptual.parameters())
    assert moved and all(p.device.type == "meta" for p in moved)
    assert all(p.device.type == "meta" for p in module.student.parameters())
    # the evaluators' per-process classifier is not the one that moved
    from dd.metrics.digits import default_classifier

    assert all(p.device.type == "cpu" for p in default_classifier().parameters())


def test_the_digits_perceptual_term_refuses_a_teacher_of_other_images():
    """``loss.perceptual digits`` with an official-format teacher (the parity fixtures' 8 px
    VAR and LlamaGen) is refused before training, naming both image shapes (it failed at the
    first step); the three tiny teachers' 16 px images pass."""
    from dd.metrics.digits import DigitsPerceptual
    from dd.teacher_spec import load_teacher
    from tests.parity import llamagen_fixture_spec, var_fixture_spec

    perceptual = DigitsPerceptual()
    for name in ("llamagen-digits", "var-digits", "far-digits"):
        perceptual.check_images_of(load_tiny_teacher(name))
    for spec in (var_fixture_spec(), llamagen_fixture_spec()):
        with pytest.raises(
            ValueError, match=r"\[3, 16, 16\] images; this teacher decodes \[3, 8, 8\]"
        ):
            perceptual.check_images_of(load_teacher(spec))
