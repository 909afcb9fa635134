"""
Train a small π0 from scratch on recorded sim episodes, on a CPU (the demo's default checkpoint).

A minimal, readable loop: episodes (``pi0_policy.sim.demonstrations`` ``.npz`` files) are turned
into model inputs by the inference pipeline itself (``Pi0Pipeline.prepare``: the exact transforms
the node applies), targets are the next H commanded actions in the unified layout, relative to
the state on the robot's delta joints and normalised with statistics of the data; the loss is
π0's flow-matching loss on the unified dims; AdamW with warmup and cosine decay, gradient
clipping, EMA of the weights. Checkpoints are written in the openpi layout the node loads
(``model.safetensors``, ``config.json``, ``assets/<asset_id>/norm_stats.json``,
``tokenizer.model``), every ``--save-every`` steps and at the end.

    python -m pi0_policy.training.small --data DIR --out runs/small --steps 2000

Axis letters: N frames, H horizon, U unified width, A model action width, S image side.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import pathlib
import time

from embodiment_adapters import EmbodimentAdapter, load_adapter, unified
import numpy as np

from pi0_policy.model.checkpoint import ASSETS_DIR, NORM_STATS_FILE, save_pi0
from pi0_policy.model.config import GemmaConfig, Pi0Config, SiglipConfig
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty
from pi0_policy.runtime import transforms
from pi0_policy.runtime.pipeline import Pi0Pipeline
from pi0_policy.runtime.tokenizer import PromptTokenizer, SentencePieceEncoder
from pi0_policy.sim.demonstrations import EpisodeRecord, ROBOT, TOP_CAMERA_NAME
import torch

# Norm-stats asset of the checkpoint (the node's asset_id parameter names it).
ASSET_ID = 'aloha_sim_transfer_cube_scripted'
TOKENIZER_FILE = 'tokenizer.model'
LOG_FILE = 'train_log.json'
# Vocabulary of the small model (the trained SentencePiece model uses fewer pieces).
VOCAB_SIZE = 512
# Keeps z-scored dims with (almost) no spread finite.
MIN_STD = 1e-3


def small_config(image_size: int = 96, patch_size: int = 12, horizon: int = 50,
                 width: int = 128, depth: int = 4) -> Pi0Config:
    """Return the small architecture: a few layers, ``width``-wide VLM, half as wide expert."""
    head_dim = 32
    heads = width // head_dim
    return Pi0Config(
        vlm=GemmaConfig(width=width, depth=depth, mlp_dim=2 * width, num_heads=heads,
                        num_kv_heads=1, head_dim=head_dim, vocab_size=VOCAB_SIZE),
        expert=GemmaConfig(width=width // 2, depth=depth, mlp_dim=width, num_heads=heads,
                           num_kv_heads=1, head_dim=head_dim),
        vision=SiglipConfig(width=width // 2, depth=3, mlp_dim=width, num_heads=2,
                            patch_size=patch_size, image_size=image_size),
        action_dim=32, state_dim=32, action_horizon=horizon, max_token_len=16,
        num_cameras=len(unified.MODEL_IMAGE_KEYS))


def train_tokenizer(texts: list[str], path: pathlib.Path) -> PromptTokenizer:
    """Train a tiny SentencePiece model (PaliGemma's special ids) on the task texts."""
    import sentencepiece as spm
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 50), model_writer=proto, vocab_size=VOCAB_SIZE,
        model_type='word', hard_vocab_limit=False, byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        minloglevel=2)
    path.write_bytes(proto.getvalue())
    return PromptTokenizer(SentencePieceEncoder(path), max_len=16)


def chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """Return (T, H, D): for every step t the actions t..t+H-1, the last one repeated."""
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon), len(actions) - 1)
    return actions[index]


def norm_stats(episodes: list[EpisodeRecord], adapter: EmbodimentAdapter, horizon: int,
               delta_mask: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Return openpi-style statistics of the unified state and the (delta) action chunks."""
    states, actions = [], []
    for ep in episodes:
        state = np.asarray(adapter.state_to_unified(ep.state))  # (T, U)
        target = np.asarray(adapter.actions_to_unified(chunks(ep.actions, horizon)))  # (T,H,U)
        states.append(state)
        actions.append(transforms.absolute_to_delta(target, state, delta_mask).reshape(
            -1, state.shape[1]))

    def stats(x: np.ndarray) -> dict[str, list[float]]:
        return {'mean': x.mean(0).tolist(), 'std': np.maximum(x.std(0), MIN_STD).tolist(),
                'q01': np.quantile(x, 0.01, 0).tolist(), 'q99': np.quantile(x, 0.99, 0).tolist()}
    return {'state': stats(np.concatenate(states)), 'actions': stats(np.concatenate(actions))}


@dataclasses.dataclass
class Samples:
    """Every frame in model space (held in memory)."""

    images: torch.Tensor  # (N, 3, S, S) float16, the top camera in slot 0
    state: torch.Tensor  # (N, 32) float32 normalised, padded
    actions: torch.Tensor  # (N, H, A) float32 normalised, padded targets
    tokens: torch.Tensor  # (L,) int64
    token_mask: torch.Tensor  # (L,) bool


def build_samples(episodes: list[EpisodeRecord], pipeline: Pi0Pipeline, horizon: int
                  ) -> Samples:
    """Run every frame through the inference pipeline and build its target chunk."""
    images, states, targets = [], [], []
    for ep in episodes:
        for t in range(len(ep.state)):
            inputs = pipeline.prepare({'images': {TOP_CAMERA_NAME: ep.images[t]},
                                       'state': ep.state[t], 'prompt': ep.prompt})
            images.append(torch.from_numpy(inputs.images[0]).half())
            states.append(inputs.state)
        unified_state = np.asarray(pipeline.adapter.state_to_unified(ep.state))
        target = np.asarray(pipeline.adapter.actions_to_unified(chunks(ep.actions, horizon)))
        target = transforms.absolute_to_delta(target, unified_state, pipeline.delta_mask)
        targets.append(unified.pad(pipeline.normalizer.normalize_actions(target),
                                   pipeline.action_dim))
    return Samples(images=torch.stack(images), state=torch.from_numpy(np.stack(states)),
                   actions=torch.from_numpy(np.concatenate(targets)).float(),
                   tokens=torch.from_numpy(inputs.tokens), token_mask=torch.from_numpy(
                       inputs.token_masks))


def batch(samples: Samples, index: torch.Tensor, num_cameras: int) -> dict[str, torch.Tensor]:
    """Assemble a training batch: top camera in slot 0, the other slots empty."""
    b = len(index)
    first = samples.images[index].float()  # (B, 3, S, S)
    images = torch.full((b, num_cameras) + first.shape[1:], transforms.BLACK_MODEL_VALUE)
    images[:, 0] = first
    masks = torch.zeros(b, num_cameras, dtype=torch.bool)
    masks[:, 0] = True
    return {'images': images, 'image_masks': masks,
            'tokens': samples.tokens.expand(b, -1), 'token_masks': samples.token_mask.expand(
                b, -1), 'state': samples.state[index], 'actions': samples.actions[index]}


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak``, cosine decay to peak / 10 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save(out: pathlib.Path, model: torch.nn.Module, ema: dict[str, torch.Tensor],
         stats: dict, tokenizer_file: pathlib.Path, log: dict) -> None:
    """Write a checkpoint folder with the EMA weights (openpi layout)."""
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(ema[n])
    out.mkdir(parents=True, exist_ok=True)
    save_pi0(model, out)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(raw[n])
    assets = out / ASSETS_DIR / ASSET_ID
    assets.mkdir(parents=True, exist_ok=True)
    (assets / NORM_STATS_FILE).write_text(json.dumps({'norm_stats': stats}, indent=1))
    (out / TOKENIZER_FILE).write_bytes(tokenizer_file.read_bytes())
    (out / LOG_FILE).write_text(json.dumps(log, indent=1))


def main(argv: list[str] | None = None) -> int:
    """Train and write checkpoints."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=pathlib.Path, required=True, help='folder of episodes')
    parser.add_argument('--out', type=pathlib.Path, required=True)
    parser.add_argument('--steps', type=int, default=2000)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--warmup', type=int, default=100)
    parser.add_argument('--weight-decay', type=float, default=1e-4)
    parser.add_argument('--clip', type=float, default=1.0)
    parser.add_argument('--ema', type=float, default=0.99)
    parser.add_argument('--horizon', type=int, default=50)
    parser.add_argument('--image-size', type=int, default=96)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--depth', type=int, default=4)
    parser.add_argument('--save-every', type=int, default=200)
    parser.add_argument('--max-minutes', type=float, default=0.0,
                        help='stop (and save) after this much wall time (0: no limit)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (more than one is slower on a shared CPU)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    episodes = [EpisodeRecord.load(p) for p in sorted(args.data.glob('*.npz'))]
    if not episodes:
        raise SystemExit(f'No episodes (*.npz) in {args.data}; record some first.')
    adapter = load_adapter(ROBOT)
    config = small_config(args.image_size, horizon=args.horizon, width=args.width,
                          depth=args.depth)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_file = args.out / TOKENIZER_FILE
    tokenizer = train_tokenizer(sorted({ep.prompt for ep in episodes}), tokenizer_file)
    delta_mask = np.asarray(adapter.delta_mask, bool)
    stats = norm_stats(episodes, adapter, args.horizon, delta_mask)
    normalizer = transforms.Normalizer(
        state=transforms.NormStats.from_dict(stats['state']),
        actions=transforms.NormStats.from_dict(stats['actions']))
    pipeline = Pi0Pipeline(adapter, tokenizer, normalizer, image_size=config.vision.image_size,
                           num_cameras=config.num_cameras, state_dim=config.state_dim,
                           action_dim=config.action_dim)
    samples = build_samples(episodes, pipeline, args.horizon)
    n = len(samples.state)
    print(f'{len(episodes)} episodes, {n} frames prepared in {time.perf_counter() - start:.0f}'
          ' s', flush=True)
    model = init_random(build_empty(config), seed=args.seed).train().requires_grad_(True)
    params = sum(p.numel() for p in model.parameters())
    print(f'model: {params / 1e6:.2f} M parameters', flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=args.weight_decay)
    ema = {n_: p.detach().clone() for n_, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(args.seed)
    u = adapter.unified_dim
    log = {'args': {k: str(v) for k, v in vars(args).items()}, 'episodes': len(episodes),
           'frames': n, 'params': params, 'losses': []}
    train_start = time.perf_counter()
    for step in range(args.steps):
        lr = learning_rate(step, args.lr, args.warmup, args.steps)
        for group in optimizer.param_groups:
            group['lr'] = lr
        index = torch.randint(n, (args.batch_size,), generator=generator)
        b = batch(samples, index, config.num_cameras)
        loss = model.compute_loss(b['images'], b['image_masks'], b['tokens'], b['token_masks'],
                                  b['state'], b['actions'], generator=generator)[..., :u].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        with torch.no_grad():
            for n_, p in model.named_parameters():
                ema[n_].lerp_(p, 1.0 - args.ema)
        log['losses'].append(loss.item())
        elapsed = time.perf_counter() - train_start
        if step % 20 == 0:
            recent = np.mean(log['losses'][-20:])
            print(f'step {step} loss {recent:.4f} lr {lr:.2e} {elapsed / (step + 1):.2f} s/step',
                  flush=True)
        last = step + 1 == args.steps or (args.max_minutes and elapsed > 60 * args.max_minutes)
        if (step + 1) % args.save_every == 0 or last:
            log.update(steps=step + 1, train_s=elapsed, wall_s=time.perf_counter() - start)
            save(args.out / 'last', model, ema, stats, tokenizer_file, log)
        if last:
            break
    print(f'done: {log["steps"]} steps in {log["train_s"]:.0f} s; checkpoint {args.out / "last"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
