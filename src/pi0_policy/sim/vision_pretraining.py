"""
Pretrain a small π0's vision tower to find the task object in rendered sim frames.

The published π0 starts from a SigLIP tower pretrained on web images; the small demo model has
no such tower (no model hub here) and, trained from scratch inside π0 on 200 demonstrations, it
never learns where the 3 x 4 px cube is: the joint state gives the target away one tick into
each reach, so the first frame of an episode is the only one whose actions need the camera, and
that signal is too weak (see the demo checkpoint's model card). This module gives the tower what
pretraining gives the published one, from the simulator instead of the web:

1. :func:`render_frames` renders the camera after resets with many randomised object poses,
   each after 0 to 24 control steps (the cube falls onto the table), together with MuJoCo's
   segmentation of the object (:meth:`AlohaSim.object_mask`).
2. :func:`token_targets` maps each object mask through the policy's own image resize
   (``resize_with_pad``) and names the patch token that holds the object's centre and where in
   that patch it lies.
3. :func:`pretrain` trains the tower of a freshly initialised preset π0 to say so: a linear
   head on each output token, cross-entropy over the tokens plus a squared error on the
   in-patch offset. This dense target trains in about a hundred steps. A single cube position
   regressed through attention pooling did not train at all in 1,000 steps on the same frames.

The labels come from the simulator's segmentation, which a real robot does not have: there,
start from a pretrained π0 (``pi0-policy train --init-from``) instead.

``python -m pi0_policy.sim.vision_pretraining --out cube_tower.safetensors`` writes the tower's
weights (safetensors, ``SiglipVisionTower`` keys) and a JSON report of its held-out accuracy;
``pi0-policy train --vision-init cube_tower.safetensors`` starts a new model from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import time

import numpy as np
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty
from pi0_policy.model.siglip import SiglipVisionTower
from pi0_policy.runtime import transforms
from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig, TOP_CAMERA
from pi0_policy.sim.demonstrations import DEFAULT_IMAGE_HEIGHT, DEFAULT_IMAGE_WIDTH
from pi0_policy.training.config import preset, PRESETS
from pi0_policy.training.optim import learning_rate, make_optimizer
from safetensors.torch import save_file
import torch
from torch import nn
import torch.nn.functional as F

_LOG = logging.getLogger(__name__)

# Cube-pose seeds of the pretraining frames: far from the demonstrations' (50,000 on) and the
# evaluations' (1 on, 100,000 on), so no evaluated cube pose is seen here.
DEFAULT_SEED = 1_000_000
# Control steps run after a reset before a frame is rendered: 0 .. MAX_SETTLE_STEPS - 1, so the
# frames show the cube in the air where it is sampled, falling, and lying on the table.
MAX_SETTLE_STEPS = 25
# Weight of the in-patch offset error (in patch units, |offset| <= 0.5) against the token
# cross-entropy.
OFFSET_WEIGHT = 4.0
REPORT_SUFFIX = '.json'


@dataclasses.dataclass(frozen=True)
class Frames:
    """Rendered camera frames and where the task object is in each."""

    # (N, H, W, 3) uint8 camera images.
    images: np.ndarray
    # (N, H, W) bool: pixels that show the object.
    masks: np.ndarray


def render_frames(count: int, seed: int = DEFAULT_SEED, *, camera: str = TOP_CAMERA,
                  image_height: int = DEFAULT_IMAGE_HEIGHT,
                  image_width: int = DEFAULT_IMAGE_WIDTH) -> Frames:
    """
    Render ``count`` frames of the transfer-cube scene with the cube poses of consecutive seeds.

    Frame i resets the sim with seed ``seed + i`` (both arms in the start pose), runs
    ``(seed + i) % MAX_SETTLE_STEPS`` control steps holding that pose, and renders ``camera``
    and the cube's mask.

    Args:
        count: Number of frames (>= 1).
        seed: Seed of the first frame's cube pose.
        camera: Scene camera to render.
        image_height: Rendered height in pixels (the demonstrations' by default).
        image_width: Rendered width in pixels.

    Returns:
        The frames.

    Raises:
        ValueError: ``count`` < 1.

    """
    if count < 1:
        raise ValueError(f'count must be >= 1; got {count}.')
    sim = AlohaSim(AlohaSimConfig(image_height=image_height, image_width=image_width))
    images = np.empty((count, image_height, image_width, 3), np.uint8)
    masks = np.empty((count, image_height, image_width), bool)
    try:
        for i in range(count):
            sim.reset(seed + i)
            settle = (seed + i) % MAX_SETTLE_STEPS
            if settle:
                sim.step(settle)
            images[i] = sim.render(camera)
            masks[i] = sim.object_mask(camera)
    finally:
        sim.close()
    return Frames(images, masks)


def token_targets(masks: np.ndarray, image_size: int, patch_size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Name the patch token that holds each mask's centre, as the model sees the image.

    The mask goes through ``resize_with_pad`` to (image_size, image_size) like a camera image,
    so the targets follow the policy's own resize and padding; its centre is the mean pixel
    position weighted by the resized mask.

    Args:
        masks: (N, H, W) bool object masks.
        image_size: The model's input side in pixels.
        patch_size: The tower's patch side in pixels (divides ``image_size``).

    Returns:
        ``(token, offset, visible)``: (N,) int64 row-major token index, (N, 2) float32 (row,
        column) offset of the centre from the token's centre in patch units, in [-0.5, 0.5),
        and (N,) bool, False where the object is not in view (then token 0, offset 0).

    """
    grid = image_size // patch_size
    token = np.zeros(len(masks), np.int64)
    offset = np.zeros((len(masks), 2), np.float32)
    visible = np.zeros(len(masks), bool)
    for i, mask in enumerate(masks):
        image = np.repeat((mask * np.uint8(255))[..., None], 3, axis=-1)
        weight = transforms.resize_with_pad(image, image_size, image_size)[..., 0]
        weight = weight.astype(np.float64)
        total = weight.sum()
        if total == 0.0:
            continue
        rows, cols = np.indices(weight.shape)
        # Pixel centres sit at +0.5; the centre in patch units.
        centre = np.array([(weight * (rows + 0.5)).sum(), (weight * (cols + 0.5)).sum()])
        centre = centre / total / patch_size
        cell = np.minimum(np.floor(centre).astype(np.int64), grid - 1)
        token[i] = cell[0] * grid + cell[1]
        offset[i] = centre - cell - 0.5
        visible[i] = True
    return token, offset, visible


def model_images(images: np.ndarray, image_size: int) -> torch.Tensor:
    """Turn (N, H, W, 3) uint8 camera images into the tower's (N, 3, S, S) float32 input."""
    return torch.from_numpy(np.stack([
        transforms.resize_with_pad_to_model(image, image_size, image_size)
        for image in images]))


class LocalisationHead(nn.Module):
    """The tower plus one linear map per token to (logit, row offset, column offset)."""

    def __init__(self, tower: SiglipVisionTower, width: int) -> None:
        """Wrap ``tower`` (its output tokens are ``width`` wide)."""
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(width, 3)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map (B, 3, S, S) pixels to (B, P) token logits and (B, P, 2) offsets."""
        out = self.head(self.tower(pixels, torch.float32))
        return out[..., 0], out[..., 1:]


def localisation_loss(logits: torch.Tensor, offsets: torch.Tensor, token: torch.Tensor,
                      offset: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the tokens plus ``OFFSET_WEIGHT`` x the true token's offset error."""
    rows = torch.arange(len(token))
    error = (offsets[rows, token] - offset).square().sum(-1).mean()
    return F.cross_entropy(logits, token) + OFFSET_WEIGHT * error


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Held-out localisation of a tower."""

    # Fraction of frames whose most likely token holds the object's centre.
    token_accuracy: float
    # Mean distance between the predicted and the true centre, in model-input pixels.
    mean_error_px: float
    frames: int


def evaluate(model: LocalisationHead, frames: Frames) -> Evaluation:
    """Measure how well ``model`` places the object of ``frames`` (ones it did not train on)."""
    vision = model.tower.config
    token, offset, visible = token_targets(frames.masks, vision.image_size, vision.patch_size)
    pixels = model_images(frames.images[visible], vision.image_size)
    token, offset = torch.from_numpy(token[visible]), torch.from_numpy(offset[visible])
    patch_size, grid = vision.patch_size, vision.image_size // vision.patch_size
    with torch.no_grad():
        logits, offsets = model(pixels)
    best = logits.argmax(-1)
    rows = torch.arange(len(best))

    def centre(index: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
        cell = torch.stack([index // grid, index % grid], -1).float()
        return (cell + 0.5 + within) * patch_size

    error = (centre(best, offsets[rows, best]) - centre(token, offset)).norm(dim=-1)
    return Evaluation(float((best == token).float().mean()), float(error.mean()), len(token))


def pretrain(arch: str, frames: Frames, *, steps: int, batch_size: int = 64,
             peak_lr: float = 1e-3, warmup_steps: int = 50, seed: int = 0,
             image_size: int | None = None, log_every: int = 100
             ) -> tuple[LocalisationHead, list[float]]:
    """
    Train the vision tower of a new ``arch`` π0 to place the object of ``frames``.

    The tower starts as ``pi0-policy train`` starts a new model's (``init_random`` of the
    preset with ``seed``). AdamW with the training defaults' betas, warmup and cosine decay to a
    tenth of ``peak_lr``; frames without the object in view are skipped.

    Args:
        arch: Architecture preset (see ``pi0_policy.training.config.PRESETS``).
        frames: Training frames.
        steps: Optimiser steps (>= 1).
        batch_size: Frames per step.
        peak_lr: Peak learning rate.
        warmup_steps: Linear warmup steps.
        seed: Seed of the initialisation and of the batches.
        image_size: Model input side (default: the preset's).
        log_every: Log the loss every this many steps.

    Returns:
        The trained tower with its head (``.tower`` is what ``--vision-init`` loads) and the
        loss of every step.

    Raises:
        ValueError: ``steps`` < 1, or no frame shows the object.

    """
    if steps < 1:
        raise ValueError(f'steps must be >= 1; got {steps}.')
    config = preset(arch, num_cameras=1, image_size=image_size)
    tower = init_random(build_empty(config), seed=seed).vision.requires_grad_(True)
    vision = config.vision
    token, offset, visible = token_targets(frames.masks, vision.image_size, vision.patch_size)
    if not visible.any():
        raise ValueError(f'None of the {len(visible)} frames shows the object; render frames '
                         'of a camera that sees it.')
    pixels = model_images(frames.images[visible], vision.image_size)
    token_t, offset_t = torch.from_numpy(token[visible]), torch.from_numpy(offset[visible])
    model = LocalisationHead(tower, vision.width)
    model.train()
    optimizer = make_optimizer(model, lr=peak_lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-10)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        lr = learning_rate(step, peak_lr=peak_lr, warmup_steps=warmup_steps,
                           decay_lr=peak_lr / 10, decay_steps=steps)
        for group in optimizer.param_groups:
            group['lr'] = lr
        index = torch.randint(len(pixels), (batch_size,), generator=gen)
        logits, offsets = model(pixels[index])
        loss = localisation_loss(logits, offsets, token_t[index], offset_t[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            _LOG.info('step %d/%d: loss %.4f', step + 1, steps, losses[-1])
    model.eval()
    return model, losses


def save_tower(tower: SiglipVisionTower, path: pathlib.Path, metadata: dict) -> None:
    """Write the tower's weights as safetensors (``SiglipVisionTower`` keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})


def main(argv: list[str] | None = None) -> int:
    """Render frames, pretrain the tower, report held-out accuracy, save it; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, type=pathlib.Path,
                        help='tower weights to write (.safetensors); the report goes beside it')
    parser.add_argument('--frames', type=int, default=8000, help='training frames to render')
    parser.add_argument('--test-frames', type=int, default=200,
                        help='held-out frames (the seeds after the training frames)')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED,
                        help='cube-pose seed of the first frame')
    parser.add_argument('--arch', default='small', choices=PRESETS,
                        help='π0 preset whose tower is trained (as pi0-policy train --arch)')
    parser.add_argument('--image-size', type=int,
                        help='model input side (as pi0-policy train --image-size)')
    parser.add_argument('--image-height', type=int, default=DEFAULT_IMAGE_HEIGHT,
                        help="rendered height (the demonstrations' by default)")
    parser.add_argument('--image-width', type=int, default=DEFAULT_IMAGE_WIDTH)
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--peak-lr', type=float, default=1e-3)
    parser.add_argument('--init-seed', type=int, default=0,
                        help='initialisation seed (pi0-policy train --seed of the new model)')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.suffix != '.safetensors':
        parser.error(f'--out {args.out} must end in .safetensors.')
    for flag in ('frames', 'test_frames', 'steps', 'batch_size'):
        if getattr(args, flag) < 1:
            parser.error(f'--{flag.replace("_", "-")} must be >= 1; got {getattr(args, flag)}.')
    size = {'image_height': args.image_height, 'image_width': args.image_width}
    start = time.monotonic()
    train_frames = render_frames(args.frames, args.seed, **size)
    test_frames = render_frames(args.test_frames, args.seed + args.frames, **size)
    render_s = time.monotonic() - start
    _LOG.info('Rendered %d + %d frames in %.0f s.', args.frames, args.test_frames, render_s)
    start = time.monotonic()
    model, losses = pretrain(args.arch, train_frames, steps=args.steps,
                             batch_size=args.batch_size, peak_lr=args.peak_lr,
                             seed=args.init_seed, image_size=args.image_size)
    train_s = time.monotonic() - start
    held_out = evaluate(model, test_frames)
    report = {
        'arch': args.arch, 'image_size': model.tower.config.image_size,
        'frames': args.frames, 'test_frames': args.test_frames, 'seed': args.seed,
        'init_seed': args.init_seed, 'steps': args.steps, 'batch_size': args.batch_size,
        'peak_lr': args.peak_lr, 'render_s': round(render_s, 1), 'train_s': round(train_s, 1),
        'loss_first_100': float(np.mean(losses[:100])),
        'loss_last_100': float(np.mean(losses[-100:])),
        **{f'held_out_{k}': v for k, v in dataclasses.asdict(held_out).items()},
    }
    save_tower(model.tower, args.out, report)
    args.out.with_suffix(REPORT_SUFFIX).write_text(json.dumps(report, indent=2) + '\n')
    print(f"Held out ({held_out.frames} frames): the cube's token {held_out.token_accuracy:.1%}, "
          f'centre error {held_out.mean_error_px:.2f} px; tower written to {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
