"""Parity against the shared fixtures (peer: lerobot 0.6.1), plus cache/mask/batch invariants."""

import json
import os
import subprocess
import sys

from conftest import PARITY_FIXTURES, ROOT
from pi0_policy.cli import EXIT_BAD_FIXTURE, EXIT_MISMATCH, EXIT_OK, main, run_parity
from pi0_policy.model import load_pi0
import pytest
from safetensors.torch import load_file
import torch

torch.set_num_threads(1)

FIXTURES = [PARITY_FIXTURES / 'public_openpi', PARITY_FIXTURES / 'public_lerobot']
CHECKED = ('image_tokens_0', 'velocity_t1', 'actions', 'train_losses', 'time_grid')
SUBPROCESS_TIMEOUT_S = 120
# Batched vs one-by-one runs: same math, different matmul blocking.
BATCH_ATOL = 1e-5


@pytest.mark.parametrize('fixture', FIXTURES, ids=lambda p: p.name)
def test_run_parity_passes(fixture):
    """Every quantity of the fixture is reproduced within its tolerance, grid included."""
    report = run_parity(fixture)
    assert tuple(c.name for c in report.checks) == CHECKED
    failed = [(c.name, c.max_abs_diff, c.tolerance) for c in report.checks if not c.passed]
    assert not failed
    assert report.passed


def test_parity_command_in_process(capsys):
    """The command prints each diff and PASS, and exits 0."""
    assert main(['parity', *map(str, FIXTURES)]) == EXIT_OK
    out = capsys.readouterr().out
    for name in CHECKED:
        assert out.count(f'{name} ') == len(FIXTURES)
    assert out.count('=> PASS') == len(FIXTURES)


def test_parity_command_subprocess():
    """``python -m pi0_policy.cli parity`` works as a process and exits 0."""
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src') + os.pathsep +
           os.environ.get('PYTHONPATH', '')}
    proc = subprocess.run([sys.executable, '-m', 'pi0_policy.cli', 'parity', *map(str, FIXTURES)],
                          capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    assert proc.stdout.count('=> PASS') == len(FIXTURES)


def _copy_fixture(src, dst, **overrides):
    """Link a fixture's files into ``dst`` with config.json fields overridden."""
    dst.mkdir()
    for name in ('model.safetensors', 'io.safetensors'):
        (dst / name).symlink_to(src / name)
    data = json.loads((src / 'config.json').read_text())
    for key, value in overrides.items():
        data[key] = value
    (dst / 'config.json').write_text(json.dumps(data))
    return dst


def test_parity_detects_wrong_grid_and_tight_tolerance(tmp_path, capsys):
    """An openpi-rule grid and a zero tolerance both fail with exit status 1."""
    src = FIXTURES[0]
    data = json.loads((src / 'config.json').read_text())
    grid = dict(data['time_grid'], rule='openpi')
    bad_grid = _copy_fixture(src, tmp_path / 'grid', time_grid=grid)
    tight = _copy_fixture(src, tmp_path / 'tight',
                          tolerances=dict(data['tolerances'], actions_abs=0.0))
    assert main(['parity', str(bad_grid)]) == EXIT_MISMATCH
    assert 'time_grid' in capsys.readouterr().out
    report = run_parity(tight)
    assert [c.name for c in report.checks if not c.passed] == ['actions']


def test_parity_rejects_unknown_fixtures(tmp_path, capsys):
    """A directory without a fixture, or of another format, exits 2 with a clear message."""
    other = _copy_fixture(FIXTURES[0], tmp_path / 'other', format='pi0-parity-fixture v9')
    assert main(['parity', str(tmp_path / 'missing'), str(other)]) == EXIT_BAD_FIXTURE
    out = capsys.readouterr().out
    assert 'Cannot read' in out
    assert "unknown fixture format 'pi0-parity-fixture v9'" in out


@pytest.fixture(scope='module')
def fixture_model():
    """Return the fixture model and a batch-of-3 input built from its io (per-sample masks)."""
    model, cfg, _ = load_pi0(FIXTURES[0])
    io = load_file(str(FIXTURES[0] / 'io.safetensors'))
    gen = torch.Generator().manual_seed(0)
    images = torch.stack([io[f'image_{i}'] for i in range(cfg.num_cameras)], 1).repeat(3, 1, 1,
                                                                                       1, 1)
    images[1:] = torch.rand(images[1:].shape, generator=gen) * 2 - 1
    masks = torch.tensor([[True, False], [True, True], [False, True]])
    tokens = io['lang_tokens'].repeat(3, 1)
    token_masks = io['lang_mask'].bool().repeat(3, 1)
    token_masks[2, 5:] = False
    inputs = {'images': images, 'image_masks': masks, 'tokens': tokens * token_masks,
              'token_masks': token_masks, 'state': torch.randn(3, cfg.state_dim, generator=gen)}
    noise = torch.randn(3, cfg.action_horizon, cfg.action_dim, generator=gen)
    return model, inputs, noise


def test_masked_camera_pixels_do_not_matter(fixture_model):
    """Changing the pixels of masked cameras changes no output."""
    model, x, noise = fixture_model
    before = model.sample_actions(**x, noise=noise)
    images = x['images'].clone()
    images[~x['image_masks']] = torch.rand(images[~x['image_masks']].shape) * 2 - 1
    after = model.sample_actions(**{**x, 'images': images}, noise=noise)
    assert torch.equal(before, after)
    # Control: changing a valid camera does change the actions.
    images[0, 0] = -images[0, 0]
    assert not torch.allclose(model.sample_actions(**{**x, 'images': images}, noise=noise)[0],
                              before[0])


def test_kv_cache_is_not_mutated(fixture_model):
    """Denoising steps neither modify the prefix cache nor depend on earlier steps."""
    model, x, noise = fixture_model
    with torch.inference_mode():
        cache = model.build_prefix_cache(x['images'], x['image_masks'], x['tokens'],
                                         x['token_masks'])
        snapshot = [(k.clone(), v.clone()) for k, v in cache.kv]
        t = torch.full((3,), 0.5)
        first = model.denoise_step(cache, x['state'], noise, t)
        model.denoise_step(cache, x['state'], noise * 2, torch.full((3,), 0.9))
        again = model.denoise_step(cache, x['state'], noise, t)
    assert torch.equal(first, again)
    for (k, v), (k0, v0) in zip(cache.kv, snapshot):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_batch_matches_per_sample_runs(fixture_model):
    """A batch with per-sample camera and prompt masks equals running each sample alone."""
    model, x, noise = fixture_model
    batched = model.sample_actions(**x, noise=noise)
    for b in range(3):
        single = model.sample_actions(**{k: v[b:b + 1] for k, v in x.items()},
                                      noise=noise[b:b + 1])
        torch.testing.assert_close(batched[b:b + 1], single, atol=BATCH_ATOL, rtol=0)


# Another architecture in the fixture format: grouped-query attention, batch 2, three cameras with
# per-sample masks, smaller images, a short horizon and a state wider than the actions.
OTHER_ARCH = {
    'vlm': {'width': 48, 'depth': 3, 'mlp_dim': 96, 'num_heads': 4, 'num_kv_heads': 2,
            'head_dim': 8, 'vocab_size': 500},
    'expert': {'width': 24, 'depth': 3, 'mlp_dim': 40, 'num_heads': 4, 'num_kv_heads': 2,
               'head_dim': 8},
    'vision': {'width': 32, 'depth': 2, 'mlp_dim': 48, 'num_heads': 4, 'patch_size': 14,
               'image_size': 112},
    'action_dim': 16, 'state_dim': 24, 'action_horizon': 10, 'max_token_len': 20,
    'batch_size': 2, 'num_cameras': 3,
}


def _write_other_fixture(folder, layout):
    """Write a fixture of OTHER_ARCH whose reference outputs come from a model built in-process."""
    from pi0_policy.model.checkpoint import save_pi0
    from pi0_policy.model.config import Pi0Config
    from pi0_policy.model.pi0 import init_random, Pi0Model
    from safetensors.torch import save_file

    folder.mkdir()
    data = dict(json.loads((FIXTURES[0] / 'config.json').read_text()), **OTHER_ARCH,
                checkpoint_format=layout)
    spec = folder / 'fixture.json'
    spec.write_text(json.dumps(data))
    model = Pi0Model(Pi0Config.from_fixture_json(spec))
    init_random(model, 3)
    save_pi0(model, folder, layout=layout)
    spec.replace(folder / 'config.json')  # the fixture's config.json, not the checkpoint's
    gen = torch.Generator().manual_seed(1)
    b, size, horizon = 2, OTHER_ARCH['vision']['image_size'], OTHER_ARCH['action_horizon']
    io = {f'image_{i}': torch.rand(b, 3, size, size, generator=gen) * 2 - 1 for i in range(3)}
    io['image_mask'] = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.uint8)
    io['lang_mask'] = torch.zeros(b, OTHER_ARCH['max_token_len'], dtype=torch.uint8)
    io['lang_mask'][0, :7] = 1
    io['lang_mask'][1, :12] = 1
    io['lang_tokens'] = torch.randint(4, 500, io['lang_mask'].shape, generator=gen)
    io['lang_tokens'][io['lang_mask'] == 0] = 0
    io['state'] = torch.randn(b, OTHER_ARCH['state_dim'], generator=gen)
    for name in ('noise', 'train_actions', 'train_noise'):
        io[name] = torch.randn(b, horizon, OTHER_ARCH['action_dim'], generator=gen)
    io['train_time'] = torch.tensor([0.3, 0.9])
    images = torch.stack([io[f'image_{i}'] for i in range(3)], 1)
    inputs = (images, io['image_mask'].bool(), io['lang_tokens'], io['lang_mask'].bool(),
              io['state'])
    with torch.inference_mode():
        io['image_tokens_0'] = model.embed_images(images[:, :1])[:, 0]
        io['velocity_t1'] = model.velocity(*inputs, io['noise'], torch.ones(b))
        io['actions'] = model.sample_actions(
            *inputs, noise=io['noise'], num_steps=data['num_steps'],
            time_grid=data['time_grid']['t_values'])
        io['train_losses'] = model.compute_loss(*inputs, io['train_actions'],
                                                noise=io['train_noise'], time=io['train_time'])
    save_file({k: v.contiguous() for k, v in io.items()}, str(folder / 'io.safetensors'))


@pytest.mark.parametrize('layout', ['openpi', 'lerobot'])
def test_parity_command_reads_other_architectures(tmp_path, layout):
    """Nothing in the command is tuned to the shared fixtures: GQA, B=2, 3 masked cameras."""
    folder = tmp_path / layout
    _write_other_fixture(folder, layout)
    report = run_parity(folder)
    assert report.layout == layout
    assert [c.name for c in report.checks] == list(CHECKED)
    assert report.passed, report
