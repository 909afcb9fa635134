"""
``pi0-policy train``: fine-tune or train π0 on LeRobot datasets, one readable loop.

Single process::

    pi0-policy train --dataset data/transfer_cube --out runs/cube --arch small --steps 2000

Distributed data parallel (one process per GPU, or gloo on CPU)::

    torchrun --nproc_per_node 2 -m pi0_policy.training.train --dataset ... --out ...

Every rank draws the same global batch indices, flow noise and flow times from the seed and the
step, and takes its share of the batch; gradients are summed over ranks with one all-reduce of a
flat buffer, scaled so that they are the gradient of the global batch's mean loss. So N
processes follow the loss curve of one process with the same global batch (up to float
summation order). Steps past an episode's end are masked out of the loss.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any

import embodiment_adapters
import numpy as np
from pi0_policy.data.reader import DatasetReader
from pi0_policy.model.checkpoint import CONFIG_FILE, load_pi0
from pi0_policy.model.config import Pi0Config
from pi0_policy.model.flow import sample_time
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty, Pi0Model
from pi0_policy.runtime import transforms
from pi0_policy.runtime.tokenizer import find_tokenizer_file, PromptTokenizer
from pi0_policy.training import checkpoints, samples
from pi0_policy.training.config import preset, PRESETS, TrainConfig
from pi0_policy.training.optim import Ema, learning_rate, make_optimizer
from pi0_policy.training.tokenizer import TOKENIZER_FILE, train_tokenizer
from safetensors.torch import load_file
import torch
import torch.distributed as dist

_LOG = logging.getLogger(__name__)

# Numeric flags of ``train``: TrainConfig field, type, help.
FLAG_HELP = (
    ('steps', int, 'optimiser steps'), ('batch_size', int, 'global batch (split over ranks)'),
    ('warmup_steps', int, 'linear warmup steps'),
    ('decay_steps', int, 'step at which the cosine reaches --decay-lr'),
    ('save_every', int, 'steps between checkpoints'), ('log_every', int, 'steps between logs'),
    ('keep', int, 'newest checkpoints kept (0: all)'), ('seed', int, 'seed of batches and noise'),
    ('threads', int, 'torch CPU threads (0: one per core)'),
    ('peak_lr', float, 'peak learning rate'), ('decay_lr', float, 'final learning rate'),
    ('b1', float, 'AdamW beta1'), ('b2', float, 'AdamW beta2'), ('eps', float, 'AdamW eps'),
    ('weight_decay', float, 'AdamW weight decay (matrices)'),
    ('clip_norm', float, 'gradient clipping norm (0: off)'),
    ('ema_decay', float, 'EMA decay of the saved weights (0: off)'))
LOSS_CURVE_FILE = 'loss_curve.png'
LOG_FILE = 'train_log.jsonl'


@dataclasses.dataclass
class TrainResult:
    """What a run did."""

    # Loss of the global batch at every step run (before the update).
    losses: list[float]
    # Seconds per step (wall clock, rank 0).
    step_times: list[float]
    # The last checkpoint folder written (None when no checkpoint was written).
    checkpoint: pathlib.Path | None
    # Number of trainable parameters.
    trainable_params: int


# ---------------------------------------------------------------------------------- distributed
def _dist_setup(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if there is one; return (rank, world size, device)."""
    device = torch.device(cfg.device)
    if 'RANK' not in os.environ:
        return 0, 1, device
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    dist.init_process_group(backend=backend)
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def _all_sum(value: torch.Tensor, world: int) -> torch.Tensor:
    """Sum a tensor over ranks (identity in a single process)."""
    if world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _sum_gradients(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Sum the gradients over ranks with one all-reduce of a flat buffer."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


# ---------------------------------------------------------------------------------- set-up parts
def _seed_of(*parts: int) -> int:
    """Return a 63-bit seed derived from integers (same on every rank)."""
    digest = hashlib.sha256(','.join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def _noise_and_time(cfg: TrainConfig, config: Pi0Config, step: int, positions: np.ndarray,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw flow noise (B, H, A), times (B,) and RTC delays (B,) of global batch positions."""
    noise, times, delays = [], [], []
    for pos in positions:
        gen = torch.Generator().manual_seed(_seed_of(cfg.seed, step, int(pos)))
        noise.append(torch.randn(config.action_horizon, config.action_dim, generator=gen))
        times.append(sample_time(1, generator=gen))
        delays.append(torch.randint(0, cfg.rtc_max_delay + 1, (1,), generator=gen))
    return (torch.stack(noise).to(device), torch.cat(times).to(device),
            torch.cat(delays).to(device))


def delay_conditioned_times(times: torch.Tensor, delays: torch.Tensor,
                            horizon: int) -> torch.Tensor:
    """
    Return per-action flow times for training-time RTC: 0 (clean) before each delay, else t.

    Args:
        times: (B,) flow times.
        delays: (B,) number of leading actions given clean.
        horizon: H.

    Returns:
        (B, H) float32.
    """
    steps = torch.arange(horizon, device=times.device)[None, :]  # (1, H)
    return torch.where(steps < delays[:, None], 0.0, times[:, None]).float()


def _build_model(cfg: TrainConfig, adapter: Any, device: torch.device,
                 resume_dir: pathlib.Path | None) -> Pi0Model:
    """Load the model to fine-tune, rebuild the one to resume, or make a new preset."""
    if resume_dir is not None:
        config = Pi0Config.from_dict(json.loads((resume_dir / CONFIG_FILE).read_text()))
        model = build_empty(config, device=device)
    elif cfg.init_from is not None:
        model, _, info = load_pi0(cfg.init_from, device=device)
        _LOG.info('Fine-tuning %s (%s layout).', info.weights_path, info.layout)
    else:
        width = max(32, int(adapter.unified_dim))
        config = preset(cfg.arch, num_cameras=cfg.num_cameras, action_dim=width,
                        image_size=cfg.image_size)
        model = init_random(build_empty(config, device=device), seed=cfg.seed)
        if cfg.vision_init is not None:
            load_vision_tower(model, cfg.vision_init)
            _LOG.info('Vision tower initialised from %s.', cfg.vision_init)
    if cfg.rtc_max_delay:
        if cfg.rtc_max_delay >= model.config.action_horizon:
            raise ValueError(f'rtc_max_delay ({cfg.rtc_max_delay}) must be smaller than the '
                             f'action horizon ({model.config.action_horizon}).')
        model.config = dataclasses.replace(model.config, delay_conditioned=True)
    model.requires_grad_(True)
    if cfg.freeze_vlm:
        for part in (model.vision, model.projector, model.vlm):
            part.requires_grad_(False)
    return model


def load_vision_tower(model: Pi0Model, path: pathlib.Path) -> None:
    """
    Replace the model's SigLIP tower weights with those in ``path``.

    Raises:
        ValueError: The file is missing or its tensors do not fit the model's tower.

    """
    if not path.is_file():
        raise ValueError(f'vision_init {path} is not a file; pass the .safetensors that '
                         'python -m pi0_policy.sim.vision_pretraining wrote.')
    state = load_file(str(path), device=str(next(model.parameters()).device))
    own = model.vision.state_dict()
    wrong = sorted(set(own) ^ set(state)) or sorted(
        k for k in own if own[k].shape != state[k].shape)
    if wrong:
        raise ValueError(
            f'vision_init {path} does not fit the tower of this model ({model.config.vision}): '
            f'{len(wrong)} tensors differ in name or shape, e.g. {wrong[:3]}. Pretrain the '
            'tower for the same --arch and --image-size.')
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


def _tokenizer(cfg: TrainConfig, model: Pi0Model, episodes: Sequence[samples.EpisodeData],
               out_file: pathlib.Path, rank: int, world: int) -> PromptTokenizer:
    """Use the fine-tuned checkpoint's or the given tokenizer, or train one on the tasks."""
    source = None
    if cfg.tokenizer is not None:
        source = cfg.tokenizer
    elif cfg.init_from is not None:
        source = find_tokenizer_file(cfg.init_from)
        if source is None:
            raise ValueError(f'{cfg.init_from} holds no tokenizer.model; pass --tokenizer.')
    if rank == 0 and not out_file.is_file():
        if source is not None:
            out_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out_file)
        else:
            pieces = train_tokenizer(sorted({e.task for e in episodes}), out_file,
                                     vocab_size=model.config.vlm.vocab_size)
            _LOG.info('Trained a %d-piece tokenizer on the dataset tasks.', pieces)
    if world > 1:
        dist.barrier()
    return PromptTokenizer.from_file(out_file, model.config.max_token_len)


def _robot(cfg: TrainConfig, readers: Sequence[DatasetReader]) -> Any:
    """Return the adapter of the robot config (default: the dataset's robot_type)."""
    name = cfg.robot or readers[0].spec.robot_type
    if not name:
        raise ValueError('The dataset names no robot_type; pass --robot <name or yaml>.')
    return embodiment_adapters.load_adapter(name)


def plot_losses(losses: Sequence[float], path: pathlib.Path) -> None:
    """Write the loss curve (log scale) as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8)
    ax.set_xlabel('step')
    ax.set_ylabel('flow-matching loss')
    ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _Progress:
    """tqdm bar when tqdm is installed, else a line every ``log_every`` steps."""

    def __init__(self, start: int, total: int, log_every: int, enabled: bool) -> None:
        self.enabled, self.log_every, self.bar = enabled, log_every, None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}',
                                 samples_s=f'{samples_per_s:.1f}')
        elif step % self.log_every == 0:
            print(f'step {step} loss {loss:.4f} lr {lr:.2e} {samples_per_s:.1f} samples/s',
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """
    Run training to ``cfg.steps``; checkpoints go to ``cfg.out/<step>/``.

    Raises:
        ValueError: On unusable datasets, robot, checkpoint or settings.
    """
    rank, world, device = _dist_setup(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, rank, world, device, progress)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device,
           progress: bool) -> TrainResult:
    if cfg.batch_size % world:
        raise ValueError(f'batch_size {cfg.batch_size} must be a multiple of the {world} '
                         'processes.')
    out = cfg.out
    if cfg.decay_steps > cfg.steps and rank == 0:
        _LOG.warning('The learning rate decays over %d steps but the run stops at %d: pass '
                     '--decay-steps %d to finish the cosine.', cfg.decay_steps, cfg.steps,
                     cfg.steps)
    resume_dir = checkpoints.step_dirs(out)[-1] if cfg.resume and checkpoints.step_dirs(
        out) else None
    readers = [DatasetReader(p) for p in cfg.datasets]
    adapter = _robot(cfg, readers)
    model = _build_model(cfg, adapter, device, resume_dir)
    config = model.config
    episodes = samples.load_episodes(readers, adapter, config.vision.image_size)
    tokenizer = _tokenizer(cfg, model, episodes, out / TOKENIZER_FILE, rank, world)
    asset_id = cfg.asset_id or adapter.config.norm_stats_asset_id or adapter.name
    delta_mask = _delta_mask(adapter, cfg.action_mode)
    norm_stats = samples.compute_norm_stats(episodes, adapter, delta_mask, config.action_horizon)
    pipeline = samples.make_pipeline(adapter, tokenizer, norm_stats, config, cfg.action_mode)
    data = samples.TrainingSet(episodes, pipeline, config)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, lr=cfg.peak_lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
    ema = Ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start = 0
    if resume_dir is not None:
        start = int(checkpoints.load_state(resume_dir, model, optimizer, ema)['step'])
        _LOG.info('Resumed from %s at step %d.', resume_dir, start)
    losses, step_times, last_dir = _previous_losses(out, start), [], None
    local_b = cfg.batch_size // world
    bar = _Progress(start, cfg.steps, cfg.log_every, progress and rank == 0)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=cfg.bf16 and device.type == 'cuda')
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        lr = learning_rate(step, peak_lr=cfg.peak_lr, warmup_steps=cfg.warmup_steps,
                           decay_lr=cfg.decay_lr, decay_steps=cfg.decay_steps)
        for group in optimizer.param_groups:
            group['lr'] = lr
        # Global batch: same indices on every rank; this rank takes its contiguous share.
        order = np.random.default_rng(_seed_of(cfg.seed, step)).integers(
            0, len(data), cfg.batch_size)
        mine = np.arange(rank * local_b, (rank + 1) * local_b)
        batch = data.batch(order[mine], device)
        noise, times, delays = _noise_and_time(cfg, config, step, mine, device)
        valid = batch['action_valid']  # (b, H)
        if cfg.rtc_max_delay:  # the given prefix is an input, not a target
            times = delay_conditioned_times(times, delays, config.action_horizon)
            valid = valid & (times > 0)
        with autocast:
            per = model.compute_loss(batch['images'], batch['image_masks'], batch['tokens'],
                                     batch['token_masks'], batch['state'], batch['actions'],
                                     noise=noise, time=times)  # (b, H, A)
        valid = valid[:, :, None].to(per.dtype)  # (b, H, 1)
        local_sum = (per.float() * valid).sum()
        count = _all_sum(valid.sum().detach() * per.shape[-1], world)
        (local_sum / count).backward()  # summed over ranks: grad of the global mean
        _sum_gradients(params, world)
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        loss = float(_all_sum(local_sum.detach().clone(), world) / count)
        losses.append(loss)
        step_times.append(time.perf_counter() - t0)
        bar.update(step + 1, loss, lr, cfg.batch_size / step_times[-1])
        if rank == 0:
            _log(out, step + 1, loss, lr, step_times[-1])
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            if rank == 0:
                last_dir = _save(cfg, out, step + 1, model, optimizer, ema, norm_stats,
                                 asset_id, losses)
            if world > 1:
                dist.barrier()
    bar.close()
    return TrainResult(losses=losses, step_times=step_times, checkpoint=last_dir,
                       trainable_params=sum(p.numel() for p in params))


def _delta_mask(adapter: Any, action_mode: str) -> np.ndarray:
    """Return the (U,) delta mask the pipeline will use for this action mode."""
    from pi0_policy.runtime.pipeline import ACTION_MODE_ABSOLUTE, check_action_mode
    check_action_mode(action_mode)
    mask = np.asarray(adapter.delta_mask, bool).copy()
    if action_mode == ACTION_MODE_ABSOLUTE:
        mask[:] = False
    return mask


def _previous_losses(out: pathlib.Path, start: int) -> list[float]:
    """Return the logged losses of steps 1..start (resume keeps the whole curve)."""
    path = out / LOG_FILE
    if start == 0 or not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r['step']: r['loss'] for r in rows if r['step'] <= start}
    return [by_step[s] for s in sorted(by_step)]


def _log(out: pathlib.Path, step: int, loss: float, lr: float, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG_FILE, 'a') as f:
        f.write(json.dumps({'step': step, 'loss': loss, 'lr': lr, 'step_s': seconds}) + '\n')


def _save(cfg: TrainConfig, out: pathlib.Path, step: int, model: Pi0Model, optimizer: Any,
          ema: Ema | None, norm_stats: dict[str, transforms.NormStats], asset_id: str,
          losses: Sequence[float]) -> pathlib.Path:
    """Write ``<out>/<step>/`` and the loss curve; prune old checkpoints."""
    step_dir = out / str(step)
    samples.write_norm_stats(step_dir / transforms.ASSETS_DIR_NAME / asset_id
                             / transforms.NORM_STATS_FILE_NAME, norm_stats)
    shutil.copyfile(out / TOKENIZER_FILE, step_dir / TOKENIZER_FILE)
    meta = {'step': step, 'asset_id': asset_id, 'action_mode': cfg.action_mode,
            'settings': {k: (str(v) if isinstance(v, pathlib.Path) else
                             [str(x) for x in v] if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(cfg).items()}}
    checkpoints.save(step_dir, model, optimizer, ema, meta)
    plot_losses(losses, out / LOSS_CURVE_FILE)
    checkpoints.prune(out, cfg.keep)
    return step_dir


# ------------------------------------------------------------------------------------ the CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` flags (defaults: openpi's full-π0 fine-tuning values)."""
    d = TrainConfig(datasets=(), out=pathlib.Path('.'))
    parser.add_argument('--dataset', action='append', required=True, type=pathlib.Path,
                        help='LeRobot v3 dataset folder (repeat for several)')
    parser.add_argument('--out', required=True, type=pathlib.Path, help='run folder')
    parser.add_argument('--robot', help='robot config name or YAML (default: robot_type)')
    parser.add_argument('--arch', default=d.arch, choices=PRESETS, help='architecture preset')
    parser.add_argument('--init-from', type=pathlib.Path, help='π0 checkpoint to fine-tune')
    parser.add_argument('--freeze-vlm', action='store_true',
                        help='train only the action expert and heads')
    parser.add_argument('--resume', action='store_true', help='continue the run in --out')
    parser.add_argument('--asset-id', help='norm-stats asset id (default: robot config)')
    parser.add_argument('--action-mode', default=d.action_mode, choices=('robot', 'absolute'))
    parser.add_argument('--tokenizer', type=pathlib.Path,
                        help='SentencePiece .model for a new model (default: train one)')
    for name, kind, text in FLAG_HELP:
        parser.add_argument('--' + name.replace('_', '-'), type=kind, default=getattr(d, name),
                            help=f'{text} (default: %(default)s)')
    parser.add_argument('--num-cameras', type=int, default=d.num_cameras, choices=(1, 2, 3),
                        help='camera slots of a new model: 1 = base camera only (default: 3)')
    parser.add_argument('--image-size', type=int,
                        help="image side of a new model in pixels (default: the preset's)")
    parser.add_argument('--vision-init', type=pathlib.Path,
                        help='SigLIP tower weights (.safetensors) for a new model, e.g. from '
                        'python -m pi0_policy.sim.vision_pretraining')
    parser.add_argument('--rtc-max-delay', type=int, default=d.rtc_max_delay,
                        help='training-time RTC: up to this many leading actions given clean')
    parser.add_argument('--device', default=d.device, help="torch device: 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--no-bf16', action='store_true', help='float32 on CUDA too')


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the run settings from parsed flags."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values['datasets'] = tuple(args.dataset)
    values['bf16'] = not args.no_bf16
    return TrainConfig(**values)


def main_from_args(args: argparse.Namespace) -> int:
    """Run ``pi0-policy train``; return the exit status."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        result = train(config_from_args(args))
    except ValueError as e:
        print(f'ERROR: {e}', file=sys.stderr)
        return 2
    if result.checkpoint is not None:
        times = result.step_times[1:] or result.step_times
        print(f'checkpoint: {result.checkpoint}\nfinal loss: {result.losses[-1]:.4f}\n'
              f'median step: {np.median(times):.3f} s '
              f'({result.trainable_params:,} trainable parameters)')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m pi0_policy.training.train`` (torchrun)."""
    parser = argparse.ArgumentParser(prog='pi0-policy train', description=__doc__.split('\n')[1])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
