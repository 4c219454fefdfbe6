"""LlamaGen teacher internals on random tiny models: presets, RoPE, KV cache, session, sampler."""

import dataclasses

import pytest
import torch

from teachers.llamagen import (
    DD_PAPER_SAMPLING,
    GPT,
    GPTConfig,
    LlamaGenTeacher,
    VQConfig,
    VQModel,
)
from teachers.llamagen.rope import apply_rope
from teachers.llamagen.session import cfg_active
from teachers.llamagen.vq import AttnBlock
from teachers.protocol import SamplingConfig, Teacher, TeacherSession, TokenGeometry
from teachers.sampling import filter_logits, sample_tokens

# Official parameter counts (LlamaGen README / gpt.py comments), at 256 px.
OFFICIAL_PARAMS = {"B": 111e6, "L": 343e6, "XL": 775e6, "XXL": 1.4e9, "3B": 3.1e9}
PARAM_COUNT_RTOL = 0.03  # the official figures are rounded


def tiny_teacher(seed: int = 0, side: int = 4, **gpt_overrides) -> LlamaGenTeacher:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig.preset("debug", side, **gpt_overrides))
    vq = VQModel(
        VQConfig(codebook_size=256, codebook_embed_dim=8, ch=32, ch_mult=(1, 2), z_channels=32)
    )
    return LlamaGenTeacher(gpt, vq)


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_preset_parameter_counts_match_official(name):
    with torch.device("meta"):
        gpt = GPT(GPTConfig.preset(name))
    count = sum(p.numel() for p in gpt.parameters())
    assert count == pytest.approx(OFFICIAL_PARAMS[name], rel=PARAM_COUNT_RTOL)


def test_preset_shapes_and_derived_values():
    large = GPTConfig.preset("GPT-L", image_tokens_per_side=24)
    assert (large.n_layer, large.n_head, large.dim) == (24, 16, 1024)
    assert large.block_size == 576 and large.seq_len == 577 and large.num_class_embeddings == 1001
    assert GPTConfig.preset("B").ffn_hidden_dim == 2048
    assert GPTConfig.preset("3B").ffn_hidden_dim == 8704  # round_up(int(2*4*3200/3), 256)
    assert VQConfig.preset("VQ-16").downsample_factor == 16
    assert VQConfig.preset("VQ-8").downsample_factor == 8
    with pytest.raises(ValueError, match="unknown LlamaGen GPT preset"):
        GPTConfig.preset("XS")


def test_from_official_args_rejects_unknown_and_non_c2i_arguments():
    args = {
        "dim": 64,
        "n_layer": 2,
        "n_head": 4,
        "vocab_size": 256,
        "block_size": 16,
        "num_classes": 10,
        "resid_dropout_p": 0.1,
    }
    assert GPTConfig.from_official_args(args).dim == 64
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_official_args({**args, "n_embd": 3})
    with pytest.raises(ValueError, match="c2i"):
        GPTConfig.from_official_args({**args, "model_type": "t2i"})
    vq = VQConfig.from_official_args(
        {"encoder_ch_mult": [1, 2, 2, 4], "decoder_ch_mult": [1, 2, 2, 4]}
    )
    assert vq == VQConfig.preset("VQ-8")


def test_rope_zeroes_the_class_position_and_rotates_rows_then_columns(teacher):
    rope = teacher.gpt.freqs_cis  # [1 + 16, head_dim / 2, 2]
    assert torch.all(rope[0] == 0)
    x = torch.randn(1, 3, 1, teacher.gpt.config.head_dim)
    assert torch.all(apply_rope(x, rope[:3])[:, 0] == 0)
    half = rope.shape[1] // 2
    # token 1 = (row 0, col 1): row pairs unrotated; token 4 = (row 1, col 0): column pairs too.
    assert torch.allclose(rope[1 + 1, :half, 0], torch.ones(half))
    assert torch.allclose(rope[1 + 4, half:, 0], torch.ones(half))


@pytest.mark.parametrize("n_kv_head", [None, 2])
@torch.no_grad()
def test_kv_cached_session_matches_full_forward(n_kv_head):
    teacher = tiny_teacher(n_kv_head=n_kv_head)
    labels = torch.tensor([1, 7])
    tokens = torch.randint(
        0, 256, (2, teacher.geometry.num_tokens), generator=torch.Generator().manual_seed(1)
    )
    expected = torch.log_softmax(teacher.logits_teacher_forcing(labels, tokens), dim=-1)
    unguided = SamplingConfig(cfg_scale=1.0)
    with teacher.start(labels, unguided) as session:
        for step in range(teacher.geometry.num_steps):
            torch.testing.assert_close(
                session.next_log_probs()[:, 0], expected[:, step], atol=1e-5, rtol=1e-5
            )
            session.accept(tokens[:, step : step + 1])


@torch.no_grad()
def test_accepting_a_prefix_at_once_equals_one_by_one(teacher):
    labels, sampling = torch.tensor([3]), SamplingConfig(cfg_scale=2.0)
    prefix = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(2))
    with teacher.start(labels, sampling) as one_by_one, teacher.start(labels, sampling) as at_once:
        for step in range(prefix.shape[1]):
            one_by_one.next_log_probs()
            one_by_one.accept(prefix[:, step : step + 1])
            at_once.accept(prefix[:, step : step + 1])
        assert at_once.step == one_by_one.step == 9
        torch.testing.assert_close(
            at_once.next_log_probs(), one_by_one.next_log_probs(), atol=1e-5, rtol=1e-5
        )


@torch.no_grad()
def test_guided_log_probs_follow_the_official_formula(teacher):
    labels, tokens = torch.tensor([2, 5]), torch.zeros(2, 16, dtype=torch.long)
    cond = teacher.logits_teacher_forcing(labels, tokens)[:, 0]
    uncond = teacher.logits_teacher_forcing(torch.full_like(labels, teacher.null_class), tokens)[
        :, 0
    ]
    sampling = SamplingConfig(cfg_scale=2.0, temperature=0.7, top_k=20)
    with teacher.start(labels, sampling) as session:
        log_probs = session.next_log_probs()[:, 0]
        assert session.next_log_probs() is session.next_log_probs()  # no recompute
    guided = (uncond + (cond - uncond) * 2.0) / 0.7
    kth = guided.topk(20).values[:, -1:]
    expected = torch.log_softmax(guided.masked_fill(guided < kth, float("-inf")), dim=-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(log_probs).sum(-1).tolist() == [20, 20]
    # top-p alone: the session passes it on (the rule itself: tests/test_protocol.py)
    with teacher.start(
        labels, SamplingConfig(cfg_scale=2.0, temperature=0.7, top_p=0.5)
    ) as nucleus:
        expected = filter_logits(guided, top_p=0.5).log_softmax(dim=-1)
        assert torch.isinf(expected).any()
        torch.testing.assert_close(nucleus.next_log_probs()[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_cfg_interval_follows_official_decode_step_rule():
    # Official: token 0 (prefill) guided; decode step i = t - 1 unguided once i > cfg_interval.
    assert [cfg_active(t, -1) for t in range(4)] == [True] * 4
    assert [cfg_active(t, 1) for t in range(5)] == [True, True, True, False, False]
    assert [cfg_active(t, 0.5) for t in range(3)] == [True, True, False]


@torch.no_grad()
def test_cfg_interval_switches_to_conditional_logits(teacher):
    labels, tokens = torch.tensor([4]), torch.zeros(1, 16, dtype=torch.long)
    cond = teacher.logits_teacher_forcing(labels, tokens)
    with teacher.start(labels, SamplingConfig(cfg_scale=3.0, cfg_interval=0)) as session:
        for step in range(3):
            log_probs = session.next_log_probs()[0, 0]
            session.accept(tokens[:, step : step + 1])
    torch.testing.assert_close(log_probs, torch.log_softmax(cond[0, 2], -1), atol=1e-5, rtol=1e-5)


def test_session_errors_and_teardown(teacher):
    with pytest.raises(ValueError, match=r"\[10\]"):
        teacher.start(torch.tensor([0, 10]), DD_PAPER_SAMPLING)
    with pytest.raises(ValueError, match="constant"):
        teacher.start(torch.tensor([0]), SamplingConfig(cfg_scale=1.5, cfg_schedule="linear"))
    session = teacher.start(torch.tensor([0, 1]), DD_PAPER_SAMPLING)
    with pytest.raises(ValueError, match="tokens must be in"):
        session.accept(torch.tensor([[0], [256]]))
    with pytest.raises(ValueError, match=r"tokens must be integers \[2, 1\]"):
        session.accept(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must be integers \[2, 1\]"):
        session.accept(torch.zeros(2, dtype=torch.long))  # [B] is not [B, L_step]
    with pytest.raises(RuntimeError, match="interrupted"):
        with session:
            session.next_log_probs()
            raise RuntimeError("interrupted mid-loop")
    assert session._cache is None  # torn down by __exit__ even on error
    with pytest.raises(RuntimeError, match="closed"):
        session.next_log_probs()


def test_session_refuses_steps_past_the_end(teacher):
    with teacher.start(torch.tensor([0]), DD_PAPER_SAMPLING) as session:
        for _ in range(teacher.geometry.num_steps):
            session.accept(torch.zeros(1, 1, dtype=torch.long))
        with pytest.raises(RuntimeError, match="all 16 tokens"):
            session.next_log_probs()


def test_sampler_is_seeded_and_top_k_1_is_greedy(teacher):
    labels = torch.tensor([0, 3, 9])

    def draw(seed, sampling=None):
        return sample_tokens(
            teacher, labels, sampling, generator=torch.Generator().manual_seed(seed)
        )

    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == (3, 16) and first.dtype == torch.long
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(draw(0, DD_PAPER_SAMPLING), first)  # None = the default sampling
    top_1 = SamplingConfig(cfg_scale=2.0, top_k=1)
    assert torch.equal(draw(5, top_1), sample_tokens(teacher, labels, top_1, greedy=True))


def test_gpt_in_train_mode_is_a_function_of_its_inputs():
    """No hidden randomness: the class drop of CFG training is the trainer's (seeded) choice."""
    gpt = tiny_teacher().gpt
    trainable = GPT(gpt.config)
    trainable.load_state_dict(gpt.state_dict())
    trainable.train()
    labels, tokens = torch.tensor([1, 10, 4]), torch.randint(0, 256, (3, 15))
    first = trainable(labels, tokens)
    torch.manual_seed(1234)
    torch.rand(100)  # perturb the global RNG between the calls
    torch.testing.assert_close(trainable(labels, tokens), first, atol=0, rtol=0)


def test_teacher_protocol_surface(teacher):
    assert isinstance(teacher, Teacher)
    assert teacher.geometry == TokenGeometry.raster(4, 4)
    assert teacher.default_sampling() == SamplingConfig(
        cfg_scale=2.0, top_k=0, top_p=1.0, temperature=1.0
    )
    codebook = teacher.codebook
    assert codebook.shape == (256, 8)
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(256))
    assert not any(p.requires_grad for p in teacher.parameters())
    with teacher.start(torch.tensor([0]), teacher.default_sampling()) as session:
        assert isinstance(session, TeacherSession) and session.step == 0


def test_fingerprint_is_stable_and_tracks_weights():
    first, same = tiny_teacher(seed=0), tiny_teacher(seed=0)
    assert first.fingerprint() == same.fingerprint() and len(first.fingerprint()) == 16
    assert tiny_teacher(seed=1).fingerprint() != first.fingerprint()
    assert tiny_teacher(seed=0, side=2).fingerprint() != first.fingerprint()  # config is hashed too


def test_decode_embeddings_is_differentiable_and_matches_tokens(teacher):
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    embeddings = teacher.codebook[tokens].clone().requires_grad_(True)
    images = teacher.decode_embeddings(embeddings)
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, teacher.decode_tokens(tokens))
    images.mean().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="embeddings must be"):
        teacher.decode_embeddings(torch.zeros(2, 15, 8))


@pytest.mark.parametrize("ch_mult", [(1, 2), (1, 2, 2)])
def test_vq_encode_decode_shapes_for_tiny_layouts(ch_mult):
    vq = VQModel(
        VQConfig(codebook_size=64, codebook_embed_dim=4, ch=32, ch_mult=ch_mult, z_channels=16)
    ).eval()
    side = 4 * vq.config.downsample_factor
    with torch.no_grad():
        quant, indices = vq.encode(torch.rand(2, 3, side, side) * 2 - 1)
        assert quant.shape == (2, 4, 4, 4) and indices.shape == (2, 16)
        torch.testing.assert_close(vq.decode_code(indices, (4, 4)), vq.decode(quant))


def test_decoder_of_its_own_shape_and_its_validation():
    base = VQConfig(codebook_size=64, codebook_embed_dim=4, ch=16, ch_mult=(1, 2), norm_groups=8)
    light = dataclasses.replace(
        base, decoder_ch=8, decoder_num_res_blocks=0, decoder_attention=False
    )
    assert not base.has_own_decoder and light.has_own_decoder
    assert dataclasses.replace(base, decoder_attention=False).has_own_decoder
    assert light.with_encoder_shaped_decoder() == base
    full, lite = VQModel(base), VQModel(light)
    # The encoder is untouched; the decoder is narrower, has one block per level fewer and no
    # attention (the mid block is res, res; no attention at the lowest level).
    assert full.encoder.state_dict().keys() == lite.encoder.state_dict().keys()
    assert lite.decoder.conv_in.out_channels == 16 and full.decoder.conv_in.out_channels == 32
    assert [len(level.res) for level in lite.decoder.conv_blocks] == [1, 1]
    assert [len(level.res) for level in full.decoder.conv_blocks] == [3, 3]
    assert [len(level.attn) for level in lite.decoder.conv_blocks] == [0, 0]
    assert [len(level.attn) for level in full.decoder.conv_blocks] == [3, 0]
    assert [type(block).__name__ for block in lite.decoder.mid] == ["ResnetBlock"] * 2
    assert not any(isinstance(m, AttnBlock) for m in lite.decoder.modules())
    assert any(isinstance(m, AttnBlock) for m in lite.encoder.modules())
    with torch.no_grad():
        quant, _ = lite.encode(torch.rand(2, 3, 8, 8) * 2 - 1)
        assert lite.decode(quant).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="norm_groups=8"):
        VQConfig(**{**base.__dict__, "decoder_ch": 12})
    with pytest.raises(ValueError, match="decoder_num_res_blocks"):
        VQConfig(**{**base.__dict__, "decoder_num_res_blocks": -1})
