"""
Settings of a training run (one frozen dataclass) and the architecture presets.

Defaults are openpi's full-π0 fine-tuning values: AdamW (b1 0.9, b2 0.95, eps 1e-8, weight decay
1e-10), gradient clipping at norm 1.0, EMA 0.99, peak learning rate 2.5e-5 after 1,000 linear
warmup steps, cosine decay to 2.5e-6 at step 30,000.
"""

from __future__ import annotations

import dataclasses
import pathlib

from pi0_policy.model.config import GemmaConfig, Pi0Config, SiglipConfig

# Architecture presets (``--arch``); 'small' trains on a CPU (see README for step times).
PRESETS = ('tiny', 'small', 'full')
# Prompt tokens of the small presets: task instructions are short.
SMALL_TOKEN_LEN = 16
# Vocabulary of the presets trained from scratch (their SentencePiece model is trained on the
# dataset's tasks and must fit in it).
SMALL_VOCAB = 1024


def preset(name: str, *, num_cameras: int = 3, action_dim: int = 32,
           image_size: int | None = None) -> Pi0Config:
    """
    Return an architecture preset.

    Args:
        name: 'tiny' (tests), 'small' (CPU training, 112 px images) or 'full' (published π0).
        num_cameras: Model camera slots (the first ones of MODEL_IMAGE_KEYS).
        action_dim: Width of state and action vectors (>= the robot's unified width).
        image_size: Input image side in pixels, a multiple of the patch size (default: the
            preset's).

    Raises:
        ValueError: On an unknown name, or an image size that is not a multiple of the patch.
    """
    config = _preset(name, num_cameras=num_cameras, action_dim=action_dim)
    if image_size is None:
        return config
    patch = config.vision.patch_size
    if image_size <= 0 or image_size % patch:
        nearest = patch * max(1, round(image_size / patch))
        raise ValueError(f'image_size={image_size} must be a positive multiple of the patch '
                         f'size {patch} of preset {name!r} (e.g. {nearest}).')
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision,
                                                                  image_size=image_size))


def _preset(name: str, *, num_cameras: int, action_dim: int) -> Pi0Config:
    if name == 'full':
        return dataclasses.replace(Pi0Config.full(num_cameras), action_dim=action_dim,
                                   state_dim=action_dim)
    if name == 'tiny':
        return dataclasses.replace(
            Pi0Config.tiny(num_cameras=num_cameras, vocab_size=SMALL_VOCAB),
            action_dim=action_dim, state_dim=action_dim, action_horizon=10,
            max_token_len=SMALL_TOKEN_LEN,
            vision=SiglipConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=14,
                                image_size=56))
    if name == 'small':
        return Pi0Config(
            vlm=GemmaConfig(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1,
                            head_dim=32, vocab_size=SMALL_VOCAB),
            expert=GemmaConfig(width=64, depth=4, mlp_dim=256, num_heads=4, num_kv_heads=1,
                               head_dim=32),
            vision=SiglipConfig(width=64, depth=4, mlp_dim=256, num_heads=4, patch_size=14,
                                image_size=112),
            action_dim=action_dim, state_dim=action_dim, action_horizon=50,
            max_token_len=SMALL_TOKEN_LEN, num_cameras=num_cameras)
    raise ValueError(f'Unknown architecture preset {name!r}; choose one of {list(PRESETS)}.')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; ``pi0-policy train`` fills it from flags."""

    # LeRobot dataset folders (one robot; several folders are concatenated).
    datasets: tuple[pathlib.Path, ...]
    # Output folder: <out>/<step>/ checkpoints, loss curve, log.
    out: pathlib.Path
    # Robot config name or path (embodiment adapter); default: the dataset's robot_type.
    robot: str | None = None
    # Architecture preset, used when not fine-tuning (ignored with init_from).
    arch: str = 'small'
    # Checkpoint to fine-tune from (openpi or LeRobot layout), or None to train from scratch.
    init_from: pathlib.Path | None = None
    # Train only the action expert and heads (vision tower, projector and VLM frozen).
    freeze_vlm: bool = False
    # Resume from the newest checkpoint in ``out``.
    resume: bool = False
    # Norm-stats asset id written (default: the robot config's norm_stats_asset_id, else robot).
    asset_id: str | None = None
    # Action mode of the pipeline ('robot': the config's delta joints; 'absolute').
    action_mode: str = 'robot'
    # Total optimiser steps.
    steps: int = 30_000
    # Global batch size (split over DDP ranks).
    batch_size: int = 32
    # Peak learning rate, warmup steps, final learning rate and the step it is reached.
    peak_lr: float = 2.5e-5
    warmup_steps: int = 1_000
    decay_lr: float = 2.5e-6
    decay_steps: int = 30_000
    # AdamW.
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 1e-10
    # Gradient clipping (global L2 norm); 0 disables it.
    clip_norm: float = 1.0
    # EMA decay of the weights saved for inference; 0 disables EMA.
    ema_decay: float = 0.99
    # Steps between checkpoints and between log lines.
    save_every: int = 1_000
    log_every: int = 10
    # Keep only the newest N checkpoints (0 keeps all).
    keep: int = 2
    # Seed of sampling, noise and flow times (identical on every rank).
    seed: int = 0
    # torch device ('cpu', 'cuda', 'cuda:0'); DDP ranks use their local rank's GPU.
    device: str = 'cpu'
    # bfloat16 autocast on CUDA.
    bf16: bool = True
    # torch CPU threads per process (0: torch's default, one per core). On a shared machine
    # 1 thread is often faster than threads that wait for each other.
    threads: int = 0
    # Training-time RTC: the first d ~ U{0..rtc_max_delay} actions of each target chunk are
    # given clean (flow time 0) and left out of the loss; the checkpoint is marked
    # delay_conditioned. 0 disables it.
    rtc_max_delay: int = 0
    # SentencePiece tokenizer file for a model trained from scratch (None: train one).
    tokenizer: pathlib.Path | None = None
    # Camera slots and image side of a new model (a preset's; ignored with init_from/resume).
    num_cameras: int = 3
    image_size: int | None = None
    # SigLIP tower weights (safetensors, ``SiglipVisionTower`` keys) that a new model starts
    # from instead of random ones, e.g. from ``python -m pi0_policy.sim.vision_pretraining``.
    vision_init: pathlib.Path | None = None

    def __post_init__(self) -> None:
        """Check cross-field consistency."""
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f'steps ({self.steps}) and batch_size ({self.batch_size}) must be '
                             'positive.')
        if self.warmup_steps < 0 or self.decay_steps < self.warmup_steps:
            raise ValueError(f'decay_steps ({self.decay_steps}) must be >= warmup_steps '
                             f'({self.warmup_steps}) >= 0.')
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f'ema_decay ({self.ema_decay}) must be in [0, 1).')
        if self.arch not in PRESETS:
            raise ValueError(f'arch {self.arch!r} is not one of {list(PRESETS)}.')
        if self.freeze_vlm and self.init_from is None:
            raise ValueError('freeze_vlm needs init_from: a VLM trained from scratch cannot stay '
                             'frozen at its random values.')
        if self.rtc_max_delay < 0:
            raise ValueError(f'rtc_max_delay ({self.rtc_max_delay}) must be >= 0.')
        if not 1 <= self.num_cameras <= 3:
            raise ValueError(f'num_cameras ({self.num_cameras}) must be 1, 2 or 3 (base, left '
                             'wrist, right wrist slots).')
        if (self.image_size is not None or self.num_cameras != 3
                or self.vision_init is not None) and (self.init_from is not None or self.resume):
            raise ValueError('num_cameras, image_size and vision_init shape a new model; a '
                             "fine-tuned or resumed run keeps its checkpoint's. Drop them, or "
                             'train anew.')
        if self.threads < 0:
            raise ValueError(f'threads ({self.threads}) must be >= 0 (0: torch default).')
        if self.save_every <= 0 or self.log_every <= 0:
            raise ValueError(f'save_every ({self.save_every}) and log_every ({self.log_every}) '
                             'must be positive.')
