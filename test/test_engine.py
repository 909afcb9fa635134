"""The inference engine equals the model: sampling, prefix cache, steps, dtypes, fused weights."""

import argparse
import io

from conftest import PARITY_FIXTURES
from pi0_policy import benchmark
from pi0_policy.engine import compute, gemma as fast_gemma, Pi0Engine
from pi0_policy.model import ChunkPrior, load_pi0, Pi0Model
from pi0_policy.model.config import Pi0Config, read_fixture_json
from pi0_policy.model.gemma import apply_rope, rope_cos_sin
from pi0_policy.model.pi0 import build_empty
import pytest
from safetensors.torch import load_file
from test_model import BF16_ATOL, chunk, make_inputs, make_model, PATH_ATOL, small_config
import torch
import torch.nn.functional as F

torch.set_num_threads(1)


@pytest.mark.parametrize('heads', [(4, 2), (4, 1), (2, 2)])
def test_engine_matches_model(heads):
    """Prefix cache, one step and whole sampling equal the model's (GQA, masks, B=3)."""
    cfg = small_config(*heads)
    model = make_model(cfg)
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    time = torch.tensor([1.0, 0.5, 0.25])
    want_cache = model.build_prefix_cache(x['images'], x['image_masks'], x['tokens'],
                                          x['token_masks'])
    want_v = model.denoise_step(want_cache, x['state'], noise, time).detach()
    want = model.sample_actions(**x, noise=noise, num_steps=4)
    engine = Pi0Engine(model)
    with torch.inference_mode():
        cache = engine.run_prefix(*engine.embed_prefix(x['images'], x['image_masks'],
                                                       x['tokens'], x['token_masks']))
        ctx = engine.prepare_denoise(cache, x['state'])
        v = engine.denoise(ctx, noise, engine.time_embeddings(time))
        got = engine.sample_actions(**x, noise=noise, num_steps=4)
    for (k, v0), (k1, v1) in zip(cache.kv, want_cache.kv):
        torch.testing.assert_close(k, k1, atol=PATH_ATOL, rtol=0)
        torch.testing.assert_close(v0, v1, atol=PATH_ATOL, rtol=0)
    torch.testing.assert_close(v, want_v, atol=PATH_ATOL, rtol=0)
    torch.testing.assert_close(got, want, atol=PATH_ATOL, rtol=0)
    # Steps do not depend on earlier steps (the K/V work buffers are rewritten each time).
    with torch.inference_mode():
        engine.denoise(ctx, noise * 2, engine.time_embeddings(time * 0.5))
        assert torch.equal(engine.denoise(ctx, noise, engine.time_embeddings(time)), v)


def test_engine_bfloat16_policies():
    """Every compute policy of bf16 storage stays close to the float32 model."""
    cfg = small_config()
    want = make_model(cfg).sample_actions(**make_inputs(cfg), noise=chunk(cfg, 3, 0),
                                          num_steps=3)
    model = make_model(cfg).set_dtype(torch.bfloat16)
    for policy in compute.COMPUTE_POLICIES:
        engine = Pi0Engine(model, policy=policy)
        assert engine.compute_dtype == model.compute_dtype == compute.resolve_compute_dtype(
            torch.bfloat16, 'cpu', policy)
        out = engine.sample_actions(**make_inputs(cfg), noise=chunk(cfg, 3, 0), num_steps=3)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, want, atol=BF16_ATOL, rtol=0)
    with pytest.raises(ValueError, match="compute policy must be one of .* got 'fast'"):
        Pi0Engine(model, policy='fast')


def test_engine_rtc_guidance_matches_model():
    """Guided sampling through the engine equals the model's guided sampling."""
    cfg = small_config()
    model = make_model(cfg)
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    previous = model.sample_actions(**x, noise=chunk(cfg, 3, 1), num_steps=3)
    prior = ChunkPrior.from_leftover(previous[:, 2:], delay=1, horizon=cfg.action_horizon)
    want = model.sample_actions(**x, noise=noise, num_steps=3, prior=prior)
    with torch.inference_mode():  # as Pi0Policy.infer calls it
        got = Pi0Engine(model).sample_actions(**x, noise=noise, num_steps=3, prior=prior)
    torch.testing.assert_close(got, want, atol=PATH_ATOL, rtol=0)
    assert not torch.allclose(got, model.sample_actions(**x, noise=noise, num_steps=3))


def test_compute_policy_resolution():
    """float32 storage always computes float32; bf16 follows the policy and the hardware."""
    native = compute.cpu_has_native_bf16()
    assert compute.resolve_compute_dtype(torch.float32, 'cpu', 'storage') == torch.float32
    assert compute.resolve_compute_dtype(torch.bfloat16, 'cpu', 'float32') == torch.float32
    assert compute.resolve_compute_dtype(torch.bfloat16, 'cpu', 'storage') == torch.bfloat16
    assert compute.resolve_compute_dtype(torch.bfloat16, 'cpu') == (
        torch.bfloat16 if native else torch.float32)
    assert compute.resolve_compute_dtype(torch.bfloat16, 'cuda') == torch.bfloat16
    line = compute.describe_compute(torch.bfloat16, 'cpu')
    assert f'cpu_capability={compute.cpu_capability()}' in line and 'storage=bfloat16' in line
    assert native == bool(compute.cpu_flags() & compute.NATIVE_BF16_CPU_FLAGS)


def test_linear_upcasts_in_chunks(monkeypatch):
    """A bf16 weight applied to float32 input equals the float32 matmul, chunked or not."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=gen)
    w = torch.randn(10, 8, generator=gen).bfloat16()
    b = torch.randn(10, generator=gen).bfloat16()
    want = F.linear(x, w.float(), b.float())
    torch.testing.assert_close(compute.linear(x, w, b), want, atol=0, rtol=0)
    monkeypatch.setattr(compute, 'MAX_UPCAST_ELEMENTS', 24)  # 3 rows per chunk, 4 chunks
    with torch.no_grad():
        got = compute.linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=PATH_ATOL, rtol=0)  # a 1-row chunk may use gemv


def test_fused_weights_track_the_parameters():
    """The engine's fused q/k/v back the model's parameters; replacing a parameter re-fuses."""
    cfg = small_config()
    model = make_model(cfg)
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    engine = Pi0Engine(model)
    assert engine.prepare()
    attn = model.vlm.layers[1].self_attn
    qkv = engine._vlm.layers()[1].qkv
    assert qkv.data_ptr() == attn.q_proj.weight.data_ptr()
    assert engine._vlm.layers()[1].qkv is qkv  # unchanged: no copy
    with torch.no_grad():
        attn.k_proj.weight.add_(1.0)  # in place: the fused tensor sees it
    rows = attn.q_proj.weight.shape[0]
    assert torch.equal(qkv[rows:rows + attn.k_proj.weight.shape[0]], attn.k_proj.weight)
    before = engine.sample_actions(**x, noise=noise, num_steps=2)
    torch.testing.assert_close(before, model.sample_actions(**x, noise=noise, num_steps=2),
                               atol=PATH_ATOL, rtol=0)
    # Replacing a parameter (as Module.to or a loader may) breaks the views; the engine re-fuses.
    attn.k_proj.weight = torch.nn.Parameter(attn.k_proj.weight.detach().clone())
    assert engine._vlm.layers()[1].qkv is not qkv
    torch.testing.assert_close(engine.sample_actions(**x, noise=noise, num_steps=2), before,
                               atol=0, rtol=0)
    with torch.device('meta'):
        meta = Pi0Model(cfg)
    assert not Pi0Engine(meta).prepare()


def test_rope_fast_matches_reference():
    """The sign-folded RoPE equals the rotate-half formula exactly."""
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 300, (2, 7), generator=gen)
    x = torch.randn(2, 7, 3, 16, generator=gen)
    cos, sin = rope_cos_sin(positions, 16)
    got = fast_gemma.apply_rope_fast(x, *fast_gemma.rope_tables(positions, 16))
    assert torch.equal(got, apply_rope(x, cos, sin))


def test_mlp_token_blocks_match(monkeypatch):
    """Token-blocked MLPs (very long inputs) give the same outputs."""
    cfg = small_config()
    model = make_model(cfg)
    x = make_inputs(cfg)
    noise = chunk(cfg, 3, 0)
    engine = Pi0Engine(model)
    want = engine.sample_actions(**x, noise=noise, num_steps=2)
    monkeypatch.setattr(fast_gemma, 'MLP_BLOCK_ELEMENTS', 2 * cfg.vlm.mlp_dim * 5)  # 5 tokens
    torch.testing.assert_close(engine.sample_actions(**x, noise=noise, num_steps=2), want,
                               atol=PATH_ATOL, rtol=0)


def test_benchmark_reports_stages_and_validates():
    """The benchmark prints every stage as it goes and rejects bad options."""
    log = io.StringIO()
    result = benchmark.run_benchmark('tiny', cameras=1, dtype='float32', steps=2, repeats=1,
                                     warmup=0, rtc=True, log=log)
    text = log.getvalue()
    for stage in benchmark.STAGES + (benchmark.RTC_STAGE,):
        assert f'[run 1]   {stage}' in text
    assert 'cpu_capability=' in text and 'compute=float32' in text
    # Times are only positive: their ratios depend on the machine's load (numbers: benchmarks).
    assert result.step_s > 0 and result.total_s > 0
    assert result.peak_bytes >= result.loaded_bytes > 0
    assert result.rtc_total_s > 0


def test_benchmark_floor_times_every_linear_layer_of_each_stage():
    """--floor's products have the shapes of the model's linear layers, and are reported."""
    config = Pi0Config.tiny(num_cameras=1)
    model = build_empty(config, device='cpu')
    counts = {'vision': 0, 'prefix': 0, 'step': 0}
    owner = {'vision.encoder.': 'vision', 'vlm.layers.': 'prefix', 'expert.layers.': 'step'}
    for name, param in model.named_parameters():
        for start, stage in owner.items():
            if name.startswith(start) and param.dim() == 2:
                counts[stage] += param.numel()
    linears = benchmark.stage_linears(config, cameras=2)
    assert {stage: sum(n * k for n, k in shapes) * depth
            for stage, (_, shapes, depth) in linears.items()} == counts
    patches = (config.vision.image_size // config.vision.patch_size) ** 2
    assert [rows for rows, _, _ in linears.values()] == [
        2 * patches, 2 * patches + config.max_token_len, 1 + config.action_horizon]
    result = benchmark.run_benchmark('tiny', cameras=1, dtype='float32', steps=2, repeats=1,
                                     warmup=0, floor=True)
    assert set(result.floor_s) == set(benchmark.FLOOR_STAGES)
    assert all(seconds > 0 for seconds in result.floor_s.values())
    args = argparse.Namespace(arch='tiny', cameras=1, dtype='float32', device='cpu', steps=2,
                              repeats=1)
    assert 'matmul floor total' in benchmark.format_result(result, args)
    with pytest.raises(ValueError, match="policy one of .* got arch='tiny', dtype='float32', "
                                         "policy='fast'"):
        benchmark.run_benchmark('tiny', dtype='float32', policy='fast')
    with pytest.raises(ValueError, match='must be positive and warmup >= 0'):
        benchmark.run_benchmark('tiny', dtype='float32', repeats=0)


@pytest.mark.parametrize('name', ['public_openpi', 'public_lerobot'])
def test_engine_reproduces_parity_fixtures(name):
    """The engine's actions match the peer's (lerobot 0.6.1) within the fixture's tolerance."""
    fixture = PARITY_FIXTURES / name
    data = read_fixture_json(fixture)
    model, cfg, _ = load_pi0(fixture)
    ref = load_file(str(fixture / 'io.safetensors'))
    images = torch.stack([ref[f'image_{i}'] for i in range(cfg.num_cameras)], 1)
    with torch.inference_mode():
        got = Pi0Engine(model).sample_actions(
            images, ref['image_mask'].bool(), ref['lang_tokens'], ref['lang_mask'].bool(),
            ref['state'], noise=ref['noise'], num_steps=int(data['num_steps']),
            time_grid=data['time_grid']['t_values'])
    diff = (got - ref['actions']).abs().max().item()
    assert diff <= float(data['tolerances']['actions_abs']), diff
