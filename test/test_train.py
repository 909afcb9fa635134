"""pi0-policy train: loss goes down, checkpoints load in Pi0Policy, resume, fine-tune, DDP."""

import dataclasses
import json
import os
import subprocess
import sys

from conftest import ROOT
import embodiment_adapters
import numpy as np
from pi0_policy.cli import main as cli_main
from pi0_policy.data.layout import DatasetSpec
from pi0_policy.data.writer import DatasetWriter
from pi0_policy.model.checkpoint import load_pi0
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.training import samples
from pi0_policy.training.config import preset, TrainConfig
from pi0_policy.training.optim import learning_rate
from pi0_policy.training.tokenizer import train_tokenizer
from pi0_policy.training.train import (delay_conditioned_times, LOG_FILE, LOSS_CURVE_FILE,
                                       train)
import pytest
import torch

torch.set_num_threads(1)

FPS = 10
EPISODES = 2
LENGTH = 30
DDP_TIMEOUT_S = 240
# Two ranks sum the same per-sample losses in another order.
DDP_RTOL = 1e-4


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """Write a small mock-robot dataset: a sweeping joint and a moving bar in the image."""
    root = tmp_path_factory.mktemp('train') / 'ds'
    adapter = embodiment_adapters.load_adapter('mock')
    spec = DatasetSpec(fps=FPS, robot_type='mock', state_names=adapter.state_names,
                       action_names=adapter.action_names, cameras={'cam_main': (48, 64)})
    writer = DatasetWriter(root, spec)
    for e in range(EPISODES):
        episode = writer.start_episode('sweep the arm')
        q = np.zeros(4)
        for t in range(LENGTH):
            a = np.array([np.sin(t / 5 + e), np.cos(t / 7), 0.3 * np.sin(t / 3), 0.02])
            image = np.zeros((48, 64, 3), np.uint8)
            image[:, (2 * t) % 64] = 255
            episode.add_frame(q, a, {'cam_main': image})
            q = a.copy()
        episode.save()
    return root


def _config(dataset, out, **kw):
    base = {'datasets': (dataset,), 'out': out, 'arch': 'tiny', 'steps': 4, 'batch_size': 4,
            'warmup_steps': 1, 'decay_steps': 4, 'peak_lr': 1e-3, 'save_every': 2,
            'log_every': 1}
    base.update(kw)
    return TrainConfig(**base)


def test_learning_rate_schedule():
    """Follow openpi's warmup + cosine: tiny start, peak after warmup, decay value at the end."""
    kw = {'peak_lr': 2.5e-5, 'warmup_steps': 1000, 'decay_lr': 2.5e-6, 'decay_steps': 30000}
    assert learning_rate(0, **kw) == pytest.approx(2.5e-5 / 1001)
    assert learning_rate(1000, **kw) == pytest.approx(2.5e-5)
    assert learning_rate(30000, **kw) == pytest.approx(2.5e-6)
    assert learning_rate(50000, **kw) == pytest.approx(2.5e-6)
    defaults = TrainConfig(datasets=(), out=ROOT)
    assert (defaults.peak_lr, defaults.warmup_steps, defaults.decay_lr, defaults.decay_steps,
            defaults.b1, defaults.b2, defaults.eps, defaults.weight_decay, defaults.clip_norm,
            defaults.ema_decay) == (2.5e-5, 1000, 2.5e-6, 30000, 0.9, 0.95, 1e-8, 1e-10, 1.0,
                                    0.99)


def test_steps_lower_the_loss_on_a_fixed_batch(dataset, tmp_path):
    """Lower the flow-matching loss with AdamW steps on one batch (fixed noise and times)."""
    from pi0_policy.data.reader import DatasetReader
    adapter = embodiment_adapters.load_adapter('mock')
    config = preset('tiny', action_dim=32)
    model = init_random(build_empty(config), seed=0).requires_grad_(True)
    episodes = samples.load_episodes([DatasetReader(dataset)], adapter, config.vision.image_size)
    train_tokenizer(['sweep the arm'], tmp_path / 'tok.model', vocab_size=config.vlm.vocab_size)
    from pi0_policy.runtime.tokenizer import PromptTokenizer
    tokenizer = PromptTokenizer.from_file(tmp_path / 'tok.model', config.max_token_len)
    stats = samples.compute_norm_stats(episodes, adapter, adapter.delta_mask,
                                       config.action_horizon)
    pipeline = samples.make_pipeline(adapter, tokenizer, stats, config, 'robot')
    data = samples.TrainingSet(episodes, pipeline, config)
    batch = data.batch(range(0, len(data), 7), torch.device('cpu'))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(batch['actions'].shape, generator=gen)
    times = torch.rand(len(noise), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():
        return model.compute_loss(batch['images'], batch['image_masks'], batch['tokens'],
                                  batch['token_masks'], batch['state'], batch['actions'],
                                  noise=noise, time=times).mean()
    losses = []
    for _ in range(12):
        value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(value.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_train_checkpoint_loads_resumes_and_fine_tunes(dataset, tmp_path):
    """Checkpoints in the openpi layout load in Pi0Policy; resume continues; freeze-vlm holds."""
    out = tmp_path / 'run'
    result = train(_config(dataset, out), progress=False)
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    ckpt = out / '4'
    assert result.checkpoint == ckpt
    for rel in ('model.safetensors', 'config.json', 'tokenizer.model',
                'assets/mock/norm_stats.json', 'train_state.safetensors'):
        assert (ckpt / rel).is_file(), rel
    assert (out / LOSS_CURVE_FILE).stat().st_size > 0
    stats = json.loads((ckpt / 'assets/mock/norm_stats.json').read_text())['norm_stats']
    assert set(stats) == {'state', 'actions'} and len(stats['actions']['mean']) == 18
    policy = Pi0Policy.from_checkpoint(ckpt, 'mock')
    assert not policy.tokenizer.is_fallback
    result_actions = policy.warmup().actions
    assert result_actions.shape == (policy.action_horizon, 4)
    assert np.isfinite(result_actions).all()
    # Resume to step 6: the curve keeps its first 4 steps.
    resumed = train(dataclasses.replace(_config(dataset, out), steps=6, decay_steps=6,
                                        resume=True), progress=False)
    assert resumed.losses[:4] == result.losses and len(resumed.losses) == 6
    logged = [json.loads(line)['step'] for line in (out / LOG_FILE).read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]
    # Fine-tune from the checkpoint with the VLM frozen: only expert and heads move.
    before, _, _ = load_pi0(out / '6')
    tuned = train(_config(dataset, tmp_path / 'ft', init_from=out / '6', freeze_vlm=True,
                          steps=2, ema_decay=0.0), progress=False)
    after, _, _ = load_pi0(tuned.checkpoint)
    assert torch.equal(before.vlm.layers[0].mlp.up_proj.weight,
                       after.vlm.layers[0].mlp.up_proj.weight)
    assert not torch.equal(before.action_out_proj.weight, after.action_out_proj.weight)
    assert tuned.trainable_params < sum(p.numel() for p in before.parameters())


def test_a_new_model_takes_its_camera_slots_and_image_size(dataset, tmp_path):
    """A one-camera model at another image size trains, saves its shape and serves the robot."""
    result = train(_config(dataset, tmp_path / 'one', num_cameras=1, image_size=42, steps=2,
                           decay_steps=2), progress=False)
    saved = json.loads((result.checkpoint / 'config.json').read_text())
    assert saved['num_cameras'] == 1 and saved['vision']['image_size'] == 42
    policy = Pi0Policy.from_checkpoint(result.checkpoint, 'mock')
    assert policy.warmup().actions.shape == (policy.action_horizon, 4)
    assert preset('small', num_cameras=1, image_size=224).vision.image_size == 224
    with pytest.raises(ValueError, match='image_size=50 must be a positive multiple of the '
                                         "patch size 14 of preset 'tiny'"):
        preset('tiny', image_size=50)
    with pytest.raises(ValueError, match=r'num_cameras \(4\) must be 1, 2 or 3'):
        _config(dataset, tmp_path / 'x', num_cameras=4)
    with pytest.raises(ValueError, match='a fine-tuned or resumed run keeps its checkpoint'):
        _config(dataset, tmp_path / 'x', init_from=result.checkpoint, image_size=42)


def test_training_time_rtc(dataset, tmp_path):
    """Leading actions get flow time 0; the checkpoint is marked delay-conditioned."""
    times = delay_conditioned_times(torch.tensor([0.5, 0.9]), torch.tensor([0, 2]), 4)
    np.testing.assert_allclose(times.numpy(), [[0.5] * 4, [0.0, 0.0, 0.9, 0.9]], rtol=1e-6)
    result = train(_config(dataset, tmp_path / 'rtc', steps=2, decay_steps=2, rtc_max_delay=3),
                   progress=False)
    assert all(np.isfinite(result.losses))
    _, config, _ = load_pi0(result.checkpoint)
    assert config.delay_conditioned
    with pytest.raises(ValueError, match='smaller than the action horizon'):
        train(_config(dataset, tmp_path / 'bad', rtc_max_delay=10), progress=False)


def test_train_command_errors(dataset, tmp_path, capsys):
    """The command reports bad settings with exit status 2."""
    status = cli_main(['train', '--dataset', str(dataset), '--out', str(tmp_path / 'x'),
                       '--freeze-vlm', '--steps', '1'])
    assert status == 2
    assert 'freeze_vlm needs init_from' in capsys.readouterr().err


def test_ddp_two_processes_follow_one(dataset, tmp_path):
    """Follow 1 process's loss curve with torchrun and 2 CPU processes (gloo), same batch."""
    args = ['-m', 'pi0_policy.training.train', '--dataset', str(dataset), '--arch', 'tiny',
            '--steps', '3', '--batch-size', '4', '--warmup-steps', '1', '--decay-steps', '3',
            '--peak-lr', '1e-3', '--save-every', '3']
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src'), 'OMP_NUM_THREADS': '1'}
    runs = {'one': [], 'two': ['-m', 'torch.distributed.run', '--standalone',
                               '--nproc_per_node', '2']}
    curves = {}
    for name, launcher in runs.items():
        out = tmp_path / name
        # torchrun's flags come first, then the module it runs in every process.
        cmd = [sys.executable, *launcher, *args, '--out', str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=DDP_TIMEOUT_S)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        curves[name] = [json.loads(line)['loss']
                        for line in (out / LOG_FILE).read_text().splitlines()]
    assert len(curves['one']) == len(curves['two']) == 3
    np.testing.assert_allclose(curves['two'], curves['one'], rtol=DDP_RTOL)
