"""VAR pieces on random tiny models: configs, masks, KV cache vs teacher forcing, decoding."""

import dataclasses

import pytest
import torch

from teachers.protocol import SamplingConfig
from teachers.sampling import filter_logits, sample_tokens
from teachers.var import (
    README_FID_SAMPLING,
    VAR,
    VAR_PRESETS,
    VQVAE,
    VQVAE_PRESETS,
    VARConfig,
    VARTeacher,
    VQVAEConfig,
    block_causal_bias,
)
from teachers.var.quant import phi_index

# Parameter counts of the release models (VAR paper, Table 1): 310M, 600M, 1.0B, 2.0B.
RELEASE_PARAMS_M = {"d16": 310, "d20": 601, "d24": 1033, "d30": 2010}
UNGUIDED = SamplingConfig(cfg_scale=1.0, cfg_schedule="constant")


def tiny_teacher(seed: int = 0, **var_overrides) -> VARTeacher:
    torch.manual_seed(seed)
    var_config = dataclasses.replace(VAR_PRESETS["debug"], **var_overrides)
    vae = VQVAE(
        VQVAEConfig(vocab_size=256, z_channels=8, ch=32, ch_mult=(1, 2), patch_nums=(1, 2, 3, 4))
    )
    return VARTeacher(VAR(var_config), vae)


def random_tokens(teacher: VARTeacher, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, teacher.vae.config.vocab_size, (batch, teacher.geometry.num_tokens), generator=g
    )


@pytest.mark.parametrize("name", sorted(VAR_PRESETS))
def test_every_var_preset_builds(name):
    config = VARConfig.preset(name)
    with torch.device("meta"):
        model = VAR(config)
    if name in RELEASE_PARAMS_M:
        depth = int(name[1:])
        assert (config.embed_dim, config.num_heads, config.num_tokens) == (64 * depth, depth, 680)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6) == RELEASE_PARAMS_M[name]
    assert model.class_emb.weight.shape[0] == config.num_classes + 1  # + null class


@pytest.mark.parametrize("name", sorted(VQVAE_PRESETS))
def test_every_vqvae_preset_builds(name):
    config = VQVAEConfig.preset(name)
    with torch.device("meta"):
        vae = VQVAE(config)
    assert vae.codebook.shape == (config.vocab_size, config.z_channels)


def test_official_args_parse():
    assert VARConfig.from_official_args({"depth": 20, "shared_aln": False}) == VARConfig.preset(
        "d20"
    )
    assert VQVAEConfig.from_official_args(
        {"V": 4096, "Cvae": 32, "ch": 160, "share_quant_resi": 4}
    ) == VQVAEConfig.preset("vae_ch160v4096z32")
    with pytest.raises(ValueError, match="unknown official arguments"):
        VARConfig.from_official_args({"depth": 16, "dept": 3})
    with pytest.raises(ValueError, match="unknown VAR preset"):
        VARConfig.preset("d17")


def test_phi_assignment_of_the_release_schedule():
    """Golden values: the official numpy rule over 10 scales and 4 phis (scale 2 is a tie)."""
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_block_causal_mask_sees_own_and_earlier_scales():
    bias = block_causal_bias((1, 2, 3))[0, 0]
    visible = torch.isfinite(bias)
    assert visible[0].tolist() == [True] + [False] * 13
    assert visible[1].tolist() == [True] * 5 + [False] * 9
    assert visible[13].all()


def test_session_logits_equal_teacher_forcing():
    """KV-cached scale-by-scale run == one block-causal pass (unguided, unfiltered)."""
    teacher = tiny_teacher()
    labels, tokens = torch.tensor([3, 7]), random_tokens(teacher, 2)
    with torch.no_grad():
        expected = teacher.logits_teacher_forcing(labels, tokens).log_softmax(-1)
    with teacher.start(labels, UNGUIDED) as session:
        for k, (begin, end) in enumerate(teacher.geometry.step_ranges):
            assert session.step == k
            log_probs = session.next_log_probs()
            assert session.next_log_probs() is log_probs  # no recompute
            torch.testing.assert_close(log_probs, expected[:, begin:end], atol=1e-5, rtol=1e-5)
            session.accept(tokens[:, begin:end])
        assert session.cache is None  # freed after the last scale
        final = teacher.decode_tokens(tokens)
        torch.testing.assert_close(session.image(), final, atol=1e-5, rtol=1e-5)


def test_a_given_prefix_of_scales_runs_in_one_forward_with_the_stepped_log_probs():
    """Accepting scales nobody asked log-probs for (Alg. 4's kept prefix) runs no trunk pass;
    the next ``next_log_probs`` runs them all in one block-causal forward. Its log-probs equal
    those of the session stepped scale by scale (guided, linear ramp, top-k/top-p: the same
    filter mask, and within 1e-5: measured 1e-6 here, 8e-6 on var-digits' 200 samples) and,
    unguided, those of teacher forcing."""
    teacher = tiny_teacher()
    labels, tokens = torch.tensor([3, 7]), random_tokens(teacher, 2)
    ranges = teacher.geometry.step_ranges
    guided = SamplingConfig(cfg_scale=2.0, cfg_schedule="linear", top_k=200, top_p=0.96)
    with torch.no_grad():
        forced = teacher.logits_teacher_forcing(labels, tokens).log_softmax(-1)
    passes = []
    hook = teacher.var.blocks[0].register_forward_hook(lambda *_: passes.append(1))
    for first in range(1, len(ranges)):
        begin, end = ranges[first]
        with teacher.start(labels, guided) as stepped:
            for k in range(first):
                stepped.next_log_probs()
                stepped.accept(tokens[:, ranges[k][0] : ranges[k][1]])
            expected = stepped.next_log_probs()
        passes.clear()
        with teacher.start(labels, guided) as lazy, teacher.start(labels, UNGUIDED) as plain:
            for k in range(first):
                lazy.accept(tokens[:, ranges[k][0] : ranges[k][1]])
                plain.accept(tokens[:, ranges[k][0] : ranges[k][1]])
            assert passes == []  # accepting runs no trunk pass
            log_probs, unguided = lazy.next_log_probs(), plain.next_log_probs()
        assert len(passes) == 2  # one forward per session for the whole prefix
        assert torch.equal(log_probs.isfinite(), expected.isfinite())
        kept = expected.isfinite()
        torch.testing.assert_close(log_probs[kept], expected[kept], atol=1e-5, rtol=0)
        torch.testing.assert_close(unguided, forced[:, begin:end], atol=1e-5, rtol=1e-5)
    hook.remove()


def test_session_tears_down_cache_on_error():
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match=r"tokens must be integers \[1, 1\]"):
        with teacher.start(torch.tensor([1]), UNGUIDED) as session:
            session.accept(torch.zeros(1, 5, dtype=torch.long))
    assert session.cache is None
    session.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        session.next_log_probs()


def test_a_scale_that_fails_after_filling_the_cache_closes_the_session(monkeypatch):
    """Out of memory in the head after the blocks cached the scale: a retry would cache it
    twice and silently shift every later scale, so the session refuses it."""
    teacher = tiny_teacher()
    session = teacher.start(torch.tensor([1]), UNGUIDED)
    session.accept(torch.zeros(1, 1, dtype=torch.long))

    def out_of_memory(*args):
        raise MemoryError("head")

    with monkeypatch.context() as patch:
        patch.setattr(teacher.var, "get_logits", out_of_memory)
        with pytest.raises(MemoryError):
            session.next_log_probs()
    with pytest.raises(RuntimeError, match="closed"):
        session.next_log_probs()


def test_bad_inputs_raise():
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        teacher.start(torch.tensor([0, 10]), UNGUIDED)
    with pytest.raises(ValueError, match="cfg_interval"):
        teacher.start(torch.tensor([0]), SamplingConfig(cfg_interval=0.5))
    with teacher.start(torch.tensor([0]), UNGUIDED) as session:
        with pytest.raises(ValueError, match=r"\[0, 256\)"):
            session.accept(torch.tensor([[256]]))
    with pytest.raises(ValueError, match="tokens must be"):
        teacher.decode_tokens(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="embeddings must be"):
        teacher.decode_embeddings(torch.zeros(1, 30, 3))
    with pytest.raises(ValueError, match="does not match the VQVAE"):
        VARTeacher(
            teacher.var,
            VQVAE(
                VQVAEConfig(
                    vocab_size=128, z_channels=8, ch=32, ch_mult=(1, 2), patch_nums=(1, 2, 3, 4)
                )
            ),
        )


def test_top_k_top_p_and_cfg_ramp():
    teacher = tiny_teacher()
    labels = torch.tensor([2, 5])
    sampling = SamplingConfig(cfg_scale=3.0, cfg_schedule="linear", top_k=7, top_p=0.99)
    with teacher.start(labels, sampling) as session:
        log_probs = session.next_log_probs()
        assert (torch.isfinite(log_probs).sum(-1) <= 7).all()
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 1))
    # Scale 0 has t = 0: guided == conditional.
    with (
        teacher.start(labels, SamplingConfig(cfg_scale=3.0, cfg_schedule="linear")) as guided,
        teacher.start(labels, UNGUIDED) as plain,
    ):
        torch.testing.assert_close(guided.next_log_probs(), plain.next_log_probs())
    # Scale 2 of 4: t = cfg * 2 / 3, (1 + t) cond - t uncond, then top-p alone (the session
    # must pass it on), from teacher-forced logits of the same prefix.
    tokens = random_tokens(teacher, 2)
    cond = teacher.logits_teacher_forcing(labels, tokens)
    uncond = teacher.logits_teacher_forcing(torch.full_like(labels, teacher.null_class), tokens)
    start, end = teacher.geometry.step_ranges[2]
    t = 3.0 * 2 / (teacher.geometry.num_steps - 1)
    guided = (1 + t) * cond[:, start:end] - t * uncond[:, start:end]
    expected = filter_logits(guided, top_p=0.6).log_softmax(dim=-1)
    assert torch.isinf(expected).any()  # top-p 0.6 removes codes here
    ramp = SamplingConfig(cfg_scale=3.0, cfg_schedule="linear", top_p=0.6)
    with teacher.start(labels, ramp) as session:
        for step in range(2):
            session.accept(tokens[:, slice(*teacher.geometry.step_ranges[step])])
        torch.testing.assert_close(session.next_log_probs(), expected, atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible():
    teacher = tiny_teacher()
    labels = torch.tensor([1, 4, 9])

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sample_tokens(teacher, labels, README_FID_SAMPLING, generator=generator)

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    images = teacher.decode_tokens(first)
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_var_in_train_mode_is_a_function_of_its_inputs():
    """No hidden randomness: the label drop (cond_drop_rate) is the trainer's seeded choice."""
    teacher = tiny_teacher()
    trainable = VAR(teacher.var.config)
    trainable.load_state_dict(teacher.var.state_dict())
    trainable.train()
    assert trainable.config.cond_drop_rate > 0
    labels, tokens = torch.tensor([1, 4, 9, 10]), random_tokens(teacher, 4)
    inputs = teacher.vae.quantize.indices_to_var_input(tokens)
    first = trainable(labels, inputs)
    torch.manual_seed(1234)
    torch.rand(100)  # perturb the global RNG between the calls
    torch.testing.assert_close(trainable(labels, inputs), first, atol=0, rtol=0)


def test_temperature_divides_logits():
    teacher = tiny_teacher()
    labels = torch.tensor([0])
    with (
        teacher.start(labels, UNGUIDED) as plain,
        teacher.start(labels, SamplingConfig(temperature=2.0)) as hot,
    ):
        torch.testing.assert_close(
            hot.next_log_probs(), (plain.next_log_probs() / 2).log_softmax(-1)
        )


def test_decode_embeddings_matches_tokens_and_is_differentiable():
    teacher = tiny_teacher()
    tokens = random_tokens(teacher, 2)
    embeddings = teacher.codebook.detach()[tokens].clone().requires_grad_(True)
    images = teacher.decode_embeddings(embeddings)
    torch.testing.assert_close(images, teacher.decode_tokens(tokens), atol=1e-6, rtol=1e-6)
    images.mean().backward()
    # Every scale's embeddings receive gradient through the f_hat accumulation.
    for begin, end in teacher.geometry.step_ranges:
        assert embeddings.grad[:, begin:end].abs().sum() > 0


def test_encode_decode_round_trip_and_training_pass_of_a_short_schedule():
    """A tiny tokenizer: two levels, a 6-scale schedule, 8 norm groups."""
    torch.manual_seed(0)
    config = VQVAEConfig(
        vocab_size=64,
        z_channels=4,
        ch=16,
        ch_mult=(1, 2),
        norm_groups=8,
        patch_nums=(1, 2, 3, 4, 6, 8),
    )
    vae = VQVAE(config)
    images = torch.rand(2, 3, config.image_size, config.image_size) * 2 - 1
    tokens, f_hat = vae.encode(images)
    assert tokens.shape == (2, 1 + 4 + 9 + 16 + 36 + 64)
    torch.testing.assert_close(vae.indices_to_fhat(tokens), f_hat, atol=1e-5, rtol=1e-5)
    reconstruction, vq_loss = vae(images)
    assert reconstruction.shape == images.shape
    (reconstruction.square().mean() + vq_loss).backward()
    assert vae.encoder.conv_in.weight.grad is not None and vae.codebook.grad is not None


@pytest.mark.parametrize("overrides", [{"shared_aln": True}, {"attn_l2_norm": False}])
def test_variants_agree_between_cache_and_teacher_forcing(overrides):
    teacher = tiny_teacher(**overrides)
    labels, tokens = torch.tensor([4]), random_tokens(teacher, 1)
    with torch.no_grad():
        expected = teacher.logits_teacher_forcing(labels, tokens).log_softmax(-1)
    with teacher.start(labels, UNGUIDED) as session:
        for begin, end in teacher.geometry.step_ranges:
            torch.testing.assert_close(
                session.next_log_probs(), expected[:, begin:end], atol=1e-5, rtol=1e-5
            )
            session.accept(tokens[:, begin:end])


def test_fingerprint_is_stable_and_tracks_weights():
    teacher, twin = tiny_teacher(seed=0), tiny_teacher(seed=0)
    assert teacher.fingerprint() == twin.fingerprint() and len(teacher.fingerprint()) == 16
    with torch.no_grad():
        twin.var.head.bias[0] += 1
    twin._fingerprint = None
    assert teacher.fingerprint() != twin.fingerprint()
