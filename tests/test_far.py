"""FAR (teachers/far): the head's sampler, the shortcut objective, the tokenizer, training, the
shipped ``far-digits``, bad input.

Real components: the shipped ``far-digits`` / ``far-digits-flow`` weights and the bundled
digits; the objective tests use the ``debug`` preset. Tolerances are stated where used.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from teachers.checkpoint import CheckpointError
from teachers.data import load_digits_split
from teachers.far import (
    FARCausal,
    ShortcutSettings,
    autoencoder_preset,
    far_preset,
    load_far_teacher,
    map_noise,
    sample_head,
)
from teachers.far.config import AutoencoderConfig, FARConfig
from teachers.far.sampling import (
    SHORTCUT_MAX_SIZED_STEPS,
    draw_noise,
    head_step_size,
)
from teachers.far.shortcut import self_consistency_targets, shortcut_loss
from teachers.protocol import ContinuousSamplingConfig, ContinuousTeacher, SamplingConfig
from teachers.shipped import WEIGHTS_DIR
from teachers.tiny import load_tiny_teacher, read_metadata
from teachers.tiny.presets import TrainSettings
from teachers.tiny.train_far import encode_tokens, train_far_model, update_ema

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Held-out reconstruction MSE (images in [-1, 1]) of the shipped tokenizer; the training record
# in tiny.json says what it measured (docs/far.md); the bound leaves room for float16 weights.
RECON_MSE_BOUND = 0.02
SAME_ATOL = 1e-5  # KV-cached steps vs one full-sequence pass (different summation orders)
GUIDED = ContinuousSamplingConfig(cfg_scale=2.0, head_steps=2)


@pytest.fixture(scope="module")
def teacher():
    return load_tiny_teacher("far-digits")


@pytest.fixture(scope="module")
def heldout():
    return load_digits_split("heldout")


def debug_model(head_kind: str = "shortcut") -> FARCausal:
    torch.manual_seed(0)
    return FARCausal(far_preset("debug", head_kind=head_kind))


def test_head_sampler_is_a_deterministic_function_of_its_noise(teacher):
    labels = torch.tensor([0, 4, 9])
    noise = draw_noise(teacher, 3, torch.Generator().manual_seed(0))
    for steps in (1, 2, 8):
        sampling = ContinuousSamplingConfig(cfg_scale=1.5, head_steps=steps)
        first = map_noise(teacher, labels, noise, sampling)
        assert torch.equal(map_noise(teacher, labels, noise.clone(), sampling), first)
        other = map_noise(teacher, labels, noise + 0.5, sampling)
        assert (other - first).abs().max() > 1e-2  # the map depends on its noise
    z = torch.randn(5, teacher.model.config.dim, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(5, teacher.token_dim, generator=torch.Generator().manual_seed(2))
    a = sample_head(teacher.model.head, x0, z, num_steps=4)
    assert torch.equal(sample_head(teacher.model.head, x0, z, num_steps=4), a)


def test_kv_cached_map_equals_the_full_sequence_pass(teacher):
    labels = torch.tensor([1, 7])
    noise = draw_noise(teacher, 2, torch.Generator().manual_seed(3))
    tokens = map_noise(teacher, labels, noise, GUIDED)
    forced = teacher.map_noise_teacher_forcing(labels, tokens, noise, GUIDED)
    torch.testing.assert_close(forced, tokens, atol=SAME_ATOL, rtol=0)
    later = teacher.map_noise_teacher_forcing(labels, tokens, noise, GUIDED, start=5)
    torch.testing.assert_close(later, forced[:, 5:], atol=SAME_ATOL, rtol=0)
    for bad in (-1, teacher.geometry.num_tokens):
        with pytest.raises(ValueError, match="start must be in"):
            teacher.map_noise_teacher_forcing(labels, tokens, noise, GUIDED, start=bad)


def test_one_shortcut_step_is_told_the_whole_interval():
    # FAR Appendix B: d = 1/M up to 16 steps, d = 0 (the flow field) beyond; flow head: 0.
    assert head_step_size(True, 1) == 1.0 and head_step_size(True, 8) == 0.125
    assert head_step_size(True, 50) == 0.0 and head_step_size(False, 1) == 0.0


def test_the_sampler_gives_the_head_its_times_and_step_size():
    """FAR Appendix B's Euler steps: step ``i`` of ``M`` at ``t = i / M`` with ``d = 1 / M``
    (``d = 0`` beyond 16 steps or for a flow head); guidance mixes the two halves."""
    seen = []

    class Spy(torch.nn.Module):
        uses_step_size = True

        def forward(self, x, t, d, z):
            seen.append((t[0].item(), d[0].item(), x.shape[0]))
            return z[:, :2]  # the velocity: the condition's first two entries

    z = torch.tensor([[1.0, 2.0, 0.0]]).repeat(3, 1)
    out = sample_head(Spy(), torch.zeros(3, 2), z, num_steps=4)
    assert seen == [(0.0, 0.25, 3), (0.25, 0.25, 3), (0.5, 0.25, 3), (0.75, 0.25, 3)]
    torch.testing.assert_close(out, z[:, :2])  # 4 steps of 1/4 along a constant velocity
    seen.clear()
    guided = sample_head(Spy(), torch.zeros(3, 2), z, num_steps=2, cfg_scale=3.0, z_uncond_ND=0 * z)
    assert seen == [(0.0, 0.5, 6), (0.5, 0.5, 6)]  # [cond; uncond] in one call
    torch.testing.assert_close(guided, 3.0 * z[:, :2])  # v_u + 3 (v_c - v_u), v_u = 0
    seen.clear()
    sample_head(Spy(), torch.zeros(3, 2), z, num_steps=SHORTCUT_MAX_SIZED_STEPS + 1)
    assert {d for _, d, _ in seen} == {0.0}


def test_self_consistency_target_has_no_gradient_and_comes_from_the_ema_head():
    model = debug_model()
    ema = copy.deepcopy(model)
    with torch.no_grad():  # make the EMA head differ from the online one
        for p in ema.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    settings = ShortcutSettings()
    generator = torch.Generator().manual_seed(0)
    rows, c, d_model = 6, model.config.token_dim, model.config.dim
    x = torch.randn(rows, c, generator=generator)
    z = torch.randn(rows, d_model, generator=generator, requires_grad=True)
    t = torch.full((rows,), 0.25)
    d = torch.full((rows,), 0.25)
    target = self_consistency_targets(ema.head, x, t, d, z, settings)
    assert not target.requires_grad and target.grad_fn is None
    with torch.no_grad():  # the formula (FAR Eq. 8) with the EMA head
        v1 = ema.head(x, t, d, z)
        v2 = ema.head(x + 0.25 * v1, t + 0.25, d, z)
    torch.testing.assert_close(target, (v1 + v2) / 2, atol=1e-6, rtol=0)
    # In the full loss the targets come from the EMA head (both evaluations of Eq. 8, on the
    # self-consistency rows), and gradients reach the online head only, never the EMA head.
    tokens = torch.randn(64, c, generator=generator)
    ema_calls = []

    def ema_head(*inputs):
        ema_calls.append(inputs[0].shape[0])
        return ema.head(*inputs)

    loss, parts = shortcut_loss(
        model.head, ema_head, tokens, z.detach().repeat(11, 1)[:64], settings, generator
    )
    num_consistency = int(64 * settings.self_consistency_fraction)
    assert num_consistency > 0 and ema_calls == [num_consistency, num_consistency]
    loss.backward()
    assert "consistency" in parts and "flow" in parts
    assert all(p.grad is None for p in ema.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_the_shortcut_loss_gives_each_head_its_step_size_and_time():
    """FAR Eq. 7-8 inside ``shortcut_loss``, with spy heads: the online head is given ``2d``, a
    power of two in ``1 .. 1/64`` (all 7 levels of 128 draws), at ``t`` on the grid of ``2d``
    with ``t + 2d <= 1``; the EMA head is given ``(x_t, t, d)``, then ``(x_t + d v, t + d, d)``
    with ``d = 2d / 2``; the finest inner step ``1/128`` is queried as ``d = 0`` (docs/far.md).
    Powers of two and their sums are exact in float32: compared exactly."""
    settings = ShortcutSettings()
    online, ema = [], []

    def online_head(x, t, d, z):
        online.append((x.clone(), t.clone(), d.clone()))
        return torch.zeros_like(x)

    def ema_head(x, t, d, z):
        ema.append((x.clone(), t.clone(), d.clone()))
        return torch.ones_like(x)  # v = 1: the midpoint is x_t + d

    rows = 1024
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(rows, 2, generator=generator)
    shortcut_loss(online_head, ema_head, tokens, torch.zeros(rows, 3), settings, generator)
    num_sc = int(rows * settings.self_consistency_fraction)
    [(_, _, d_flow)] = [call for call in online if call[0].shape[0] == rows - num_sc]
    assert torch.equal(d_flow, torch.zeros_like(d_flow))  # flow matching at d = 0 (Eq. 4-6)
    [(x_t, t, double_d)] = [call for call in online if call[0].shape[0] == num_sc]
    levels = {2.0**-k for k in range(settings.num_step_levels)}
    assert set(double_d.tolist()) == levels
    assert bool((t >= 0).all()) and bool((t + double_d <= 1).all())
    assert torch.equal(t / double_d, (t / double_d).floor())  # t on the grid of 2d
    [(x_first, t_first, d_first), (x_second, t_second, d_second)] = ema
    d = double_d / 2
    d_in = torch.where(d == 2.0**-settings.num_step_levels, 0.0, d)
    assert bool((d_in == 0).any()) and bool((d_in > 0).any())
    assert torch.equal(d_first, d_in) and torch.equal(d_second, d_in)
    assert torch.equal(x_first, x_t) and torch.equal(t_first, t)
    assert torch.equal(t_second, t + d) and torch.equal(x_second, x_t + d[:, None])


def test_tokenizer_round_trip_on_real_digits(teacher, heldout):
    tokens = teacher.encode_images(heldout.images_01())
    assert tokens.shape == (len(heldout), teacher.geometry.num_tokens, teacher.token_dim)
    recon_01 = teacher.decode_tokens(tokens)
    mse_m11 = F.mse_loss(recon_01 * 2 - 1, heldout.images.clamp(-1, 1)).item()
    assert mse_m11 < RECON_MSE_BOUND
    # The token space is standardised: unit-scale channels (within 20% on held-out images).
    std_C = tokens.reshape(-1, teacher.token_dim).std(dim=0)
    assert ((std_C - 1).abs() < 0.2).all()


def test_the_teacher_trainers_ema_warms_up_then_keeps_its_decay():
    """``update_ema`` at step ``k``: ``ema <- r ema + (1 - r) p`` with
    ``r = min(decay, (1 + k) / (10 + k))``: ``r = 0.1`` at step 0 (mostly the online weights),
    ``0.91`` at step 90, the decay itself (0.999) from step 8990 on. Float32 lerp: 1e-6."""
    model, ema = debug_model(), debug_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for e in ema.parameters():
            e.add_(torch.randn(e.shape, generator=generator))
    for step, rate in ((0, 0.1), (90, 0.91), (9000, 0.999)):
        before = [e.clone() for e in ema.parameters()]
        update_ema(ema, model, step, 0.999)
        for e, old, p in zip(ema.parameters(), before, model.parameters(), strict=True):
            torch.testing.assert_close(e, rate * old + (1 - rate) * p, atol=1e-6, rtol=0)


@pytest.mark.parametrize("head_kind", ["shortcut", "flow"])
def test_a_short_training_run_lowers_the_head_loss(teacher, head_kind):
    train = load_digits_split("train")
    tokens = encode_tokens(teacher.autoencoder, train.images[:128])
    config = dataclasses.replace(
        far_preset("debug"), token_dim=teacher.token_dim, head_kind=head_kind
    )
    settings = TrainSettings(ar_steps=40, ar_batch_size=16, warmup_steps=1, ar_lr=3e-3)
    _, record = train_far_model(
        tokens, train.labels[:128], config, settings, ShortcutSettings(), progress=False
    )
    losses = record["losses"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_bad_inputs_raise_clear_errors(teacher):
    with pytest.raises(ValueError, match="head_steps"):
        ContinuousSamplingConfig(head_steps=0)
    with pytest.raises(ValueError, match="cfg_scale"):
        ContinuousSamplingConfig(cfg_scale=-1.0)
    with pytest.raises(ValueError, match="head_kind"):
        FARConfig(head_kind="diffusion")
    for bad, message in (
        ({"num_heads": 0}, "num_heads must be >= 1"),  # was a ZeroDivisionError
        ({"dim": 0}, "dim must be >= 1"),
        ({"mlp_ratio": -1.0}, "mlp_ratio must be > 0"),
        ({"class_dropout_prob": 1.5}, "class_dropout_prob must be in"),
    ):
        with pytest.raises(ValueError, match=message):
            FARConfig(**bad)
    with pytest.raises(ValueError, match="head_batch_mul must be an integer"):
        ShortcutSettings(head_batch_mul=2.5)
    with pytest.raises(ValueError, match="unknown FAR preset"):
        far_preset("huge")
    with pytest.raises(ValueError, match="resolution"):
        AutoencoderConfig(resolution=18)
    with pytest.raises(ValueError, match="ContinuousSamplingConfig"):
        teacher.start(torch.tensor([0]), object())
    z = torch.zeros(2, teacher.model.config.dim)
    x = torch.zeros(2, teacher.token_dim)
    with pytest.raises(ValueError, match="num_steps"):
        sample_head(teacher.model.head, x, z, num_steps=0)
    with pytest.raises(ValueError, match="z_uncond"):
        sample_head(teacher.model.head, x, z, num_steps=1, cfg_scale=2.0)
    flow_head = debug_model("flow").head
    with pytest.raises(ValueError, match="d must be 0"):
        flow_head(torch.zeros(2, 4), torch.zeros(2), torch.ones(2), torch.zeros(2, 32))
    n, c = teacher.geometry.num_tokens, teacher.token_dim
    with pytest.raises(ValueError, match="tokens must be"):
        teacher.decode_tokens(torch.zeros(1, n, c + 1))
    with pytest.raises(ValueError, match="noise must be"):
        teacher.map_noise_teacher_forcing(
            torch.tensor([0]), torch.zeros(1, n, c), torch.full((1, n, c), float("nan"))
        )
    codebook = "sampling must be a ContinuousSamplingConfig or None, got SamplingConfig("
    for path in (
        lambda: teacher.start(torch.tensor([0]), SamplingConfig()),
        lambda: teacher.map_noise_teacher_forcing(  # was an AttributeError (no head_steps)
            torch.tensor([0]), torch.zeros(1, n, c), torch.zeros(1, n, c), SamplingConfig()
        ),
    ):
        with pytest.raises(ValueError) as error:
            path()
        assert str(error.value).startswith(codebook) and "\n" not in str(error.value)
    with teacher.start(torch.tensor([0, 1])) as session:
        with pytest.raises(ValueError, match="noise must be"):
            session.next_tokens(torch.zeros(2, 2, c))
        with pytest.raises(ValueError, match="tokens must be"):
            session.accept(torch.zeros(2, 1, c, dtype=torch.long))
        assert session.step == 0
    with pytest.raises(RuntimeError, match="closed"):
        session.next_tokens(torch.zeros(2, 1, c))


def test_map_noise_checks_the_whole_noise_before_any_step(teacher):
    """A noise of the wrong length or batch is refused with the shape ``[B, n, C]`` it should
    have, before the backbone or the head runs (it used to fail mid-loop, at the first step
    whose slice was wrong, naming that slice's shape)."""
    labels = torch.tensor([1, 2])
    calls = []
    hooks = [
        module.register_forward_pre_hook(lambda *_: calls.append(1))
        for module in (teacher.model.norm, teacher.model.head)
    ]
    try:
        for bad in (torch.randn(2, 8, 8), torch.randn(3, 16, 8)):
            expected = f"noise must be float [2, 16, 8], got {tuple(bad.shape)} torch.float32"
            with pytest.raises(ValueError) as error:
                map_noise(teacher, labels, bad, GUIDED)
            assert str(error.value) == expected
            assert calls == []
        map_noise(teacher, labels, torch.randn(2, 16, 8), GUIDED)
        assert calls  # the hooks do see a run
    finally:
        for hook in hooks:
            hook.remove()


def test_shipped_far_digits_loads_strictly(tmp_path):
    entry = read_metadata()["far-digits"]
    assert entry["family"] == "far" and entry["command"].startswith("dd train-teacher")
    assert "--family far" in entry["command"] and entry["seed"] == 0
    teacher = load_tiny_teacher("far-digits")
    assert isinstance(teacher, ContinuousTeacher)
    assert teacher.model.config.head_kind == "shortcut"
    assert load_tiny_teacher("far-digits-flow").model.config.head_kind == "flow"
    # One weight missing from the file: refused by name, nothing half-loaded.
    from safetensors.torch import load_file, save_file

    state = load_file(str(WEIGHTS_DIR / entry["files"]["model"]))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_far_teacher(
            tmp_path / "model.safetensors",
            WEIGHTS_DIR / entry["files"]["autoencoder"],
            far_config=FARConfig(**entry["configs"]["model"]),
            autoencoder_config=autoencoder_preset("tiny"),
        )
