"""Real-time chunking in sampling: soft mask, guidance weight, exact VJP guidance, inpainting."""

import dataclasses
import math

from pi0_policy.engine import Pi0Engine
from pi0_policy.model import checkpoint, ChunkPrior, rtc
import pytest
from test_model import chunk, make_inputs, make_model, PATH_ATOL, small_config
import torch

torch.set_num_threads(1)

# The linear schedule of the reference docstring example (start 2, end 6, total 10).
LINEAR_EXAMPLE = [1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0, 0.0]
# Guided prefix error must drop below this fraction of the unguided one.
FOLLOW_RATIO = 0.5


def test_prefix_weight_schedules():
    """W is 1 before d, decays by the schedule and is 0 from H - s on."""
    linear = rtc.prefix_weights(2, 6, 10, 'linear')
    torch.testing.assert_close(linear, torch.tensor(LINEAR_EXAMPLE), atol=1e-6, rtol=0)
    exp = rtc.prefix_weights(2, 6, 10, 'exp')
    want = [w * math.expm1(w) / (math.e - 1) for w in LINEAR_EXAMPLE]
    torch.testing.assert_close(exp, torch.tensor(want), atol=1e-6, rtol=0)
    assert rtc.prefix_weights(2, 6, 10, 'ones').tolist() == [1.0] * 6 + [0.0] * 4
    assert rtc.prefix_weights(2, 6, 10, 'zeros').tolist() == [1.0] * 2 + [0.0] * 8
    assert not rtc.prefix_weights(0, 6, 10, 'zeros').any()
    assert rtc.prefix_weights(8, 6, 10, 'zeros').tolist() == [1.0] * 6 + [0.0] * 4  # d clipped
    with pytest.raises(ValueError, match="schedule must be one of .* got 'cosine'"):
        rtc.prefix_weights(2, 6, 10, 'cosine')
    with pytest.raises(ValueError, match='end=11, total=10'):
        rtc.prefix_weights(2, 11, 10)


def test_guidance_weight():
    """min(beta, (t^2 + (1-t)^2) / (t (1-t))): beta at both ends, symmetric, 2 at t = 0.5."""
    assert rtc.guidance_weight(1.0, 5.0) == 5.0 and rtc.guidance_weight(0.0, 5.0) == 5.0
    assert rtc.guidance_weight(0.5, 5.0) == pytest.approx(2.0)
    assert rtc.guidance_weight(0.3, 100.0) == pytest.approx(rtc.guidance_weight(0.7, 100.0))
    assert rtc.guidance_weight(0.3, 100.0) == pytest.approx((0.09 + 0.49) / 0.21)
    assert rtc.guidance_weight(0.1, 5.0) == 5.0


def test_guided_velocity_with_closed_form_jacobian():
    """For v(x) = J x + c the guided velocity is v - w (I - t J)^T ((Y - x1) * W), exactly."""
    gen = torch.Generator().manual_seed(0)
    b, h, a = 2, 6, 3
    n = h * a
    jac = torch.randn(n, n, generator=gen, dtype=torch.float64) * 0.3
    bias = torch.randn(n, generator=gen, dtype=torch.float64)

    def velocity(x):
        return (x.double().reshape(b, n) @ jac.T + bias).reshape(b, h, a).float()

    x_t = torch.randn(b, h, a, generator=gen)
    leftover = torch.randn(b, 4, a, generator=gen)
    prior = ChunkPrior.from_leftover(leftover, delay=2, horizon=h, max_weight=3.0)
    t = 0.7
    got = rtc.guided_velocity(velocity, x_t, t, prior)
    x = x_t.double().reshape(b, n)
    v = x @ jac.T + bias
    x1 = x - t * v
    err = (prior.target.double().reshape(b, n) - x1) * prior.weights.double().repeat_interleave(a)
    g = err @ (torch.eye(n, dtype=torch.float64) - t * jac)
    want = v - rtc.guidance_weight(t, 3.0) * g
    torch.testing.assert_close(got.double(), want.reshape(b, h, a), atol=1e-4, rtol=1e-5)


def test_zero_mask_or_zero_beta_is_plain_sampling_bit_for_bit():
    """A zero delay with W = 0, or beta = 0, gives exactly the unguided velocity and sample."""
    cfg = small_config()
    model = make_model(cfg)
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    plain = model.sample_actions(**x, noise=noise, num_steps=3)
    previous = chunk(cfg, 3, 7)
    no_mask = ChunkPrior.from_leftover(previous, delay=0, horizon=cfg.action_horizon,
                                       schedule='zeros')
    no_beta = ChunkPrior.from_leftover(previous, delay=2, horizon=cfg.action_horizon,
                                       max_weight=0.0)
    engine = Pi0Engine(make_model(cfg))
    engine_plain = engine.sample_actions(**x, noise=noise, num_steps=3)
    for prior in (no_mask, no_beta):
        assert torch.equal(model.sample_actions(**x, noise=noise, num_steps=3, prior=prior),
                           plain)
        assert torch.equal(engine.sample_actions(**x, noise=noise, num_steps=3, prior=prior),
                           engine_plain)
    # The guidance function itself adds exactly nothing with a zero mask.
    cache = model.build_prefix_cache(x['images'], x['image_masks'], x['tokens'],
                                     x['token_masks'])
    time = torch.full((3,), 0.6)

    def velocity(x_t):
        return model.denoise_step(cache, x['state'], x_t, time)

    assert torch.equal(rtc.guided_velocity(velocity, noise, 0.6, no_mask),
                       velocity(noise).detach())


def test_guided_prefix_follows_the_leftover():
    """The frozen first d actions of a guided sample follow Y far closer than unguided ones."""
    cfg = dataclasses.replace(small_config(), action_horizon=10)
    model = make_model(cfg)
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    d, s = 3, 4
    previous = model.sample_actions(**x, noise=chunk(cfg, 3, 5), num_steps=5) + 0.5
    prior = ChunkPrior.from_leftover(previous[:, s:], delay=d, horizon=cfg.action_horizon)
    guided = model.sample_actions(**x, noise=noise, num_steps=5, prior=prior)
    plain = model.sample_actions(**x, noise=noise, num_steps=5)
    target = previous[:, s:s + d]
    guided_err = (guided[:, :d] - target).abs().mean()
    plain_err = (plain[:, :d] - target).abs().mean()
    assert guided_err < FOLLOW_RATIO * plain_err, (guided_err, plain_err)
    # Where W = 0 (beyond the leftover) guidance has less pull than on the frozen steps.
    assert torch.isfinite(guided).all() and guided.shape == plain.shape


def test_prior_stays_in_model_space():
    """Y is padded by repeating its last action (not zeros); shapes and delays are checked."""
    cfg = small_config()
    leftover = torch.randn(2, cfg.action_horizon - 2, cfg.action_dim) + 3.0
    prior = ChunkPrior.from_leftover(leftover, delay=1, horizon=cfg.action_horizon)
    assert prior.target.shape == (2, cfg.action_horizon, cfg.action_dim)
    assert torch.equal(prior.target[:, :3], leftover)
    assert torch.equal(prior.target[:, 3:], leftover[:, -1:].expand(2, 2, cfg.action_dim))
    assert prior.weights[3:].abs().sum() == 0
    with pytest.raises(ValueError, match=r'delay d=4 must satisfy 0 <= d <= len\(leftover\)=3'):
        ChunkPrior.from_leftover(leftover, delay=4, horizon=cfg.action_horizon)
    with pytest.raises(ValueError, match='1 <= n <= horizon=5'):
        ChunkPrior.from_leftover(torch.zeros(7, cfg.action_dim), delay=1, horizon=5)
    model = make_model(cfg)
    with pytest.raises(ValueError, match='RTC prior target must be'):
        model.sample_actions(**make_inputs(cfg), prior=ChunkPrior.from_leftover(
            torch.zeros(3, 4), delay=1, horizon=cfg.action_horizon))


def test_delay_conditioned_checkpoint_hard_inpaints(tmp_path):
    """A checkpoint flagged delay_conditioned gets its first d actions clean, without guidance."""
    cfg = dataclasses.replace(small_config(), delay_conditioned=True)
    model = make_model(cfg)
    checkpoint.save_pi0(model, tmp_path)
    loaded, loaded_cfg, _ = checkpoint.load_pi0(tmp_path)
    assert loaded_cfg.delay_conditioned
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    leftover = chunk(cfg, 3, 4)[:, 1:]
    prior = ChunkPrior.from_leftover(leftover, delay=2, horizon=cfg.action_horizon)
    out = loaded.sample_actions(**x, noise=noise, num_steps=3, prior=prior)
    assert torch.equal(out[:, :2], leftover[:, :2])
    engine_out = Pi0Engine(loaded).sample_actions(**x, noise=noise, num_steps=3, prior=prior)
    torch.testing.assert_close(engine_out, out, atol=PATH_ATOL, rtol=0)
    assert not torch.allclose(out, loaded.sample_actions(**x, noise=noise, num_steps=3))
