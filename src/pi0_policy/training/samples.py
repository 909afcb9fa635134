"""
Training samples: dataset frames become model inputs through the inference pipeline.

Each sample is a frame t of an episode: its camera images, state and prompt go through
``Pi0Pipeline.prepare`` (the exact transforms the policy node applies), and its target is the
chunk of the next H commanded actions, mapped to the unified layout, made relative to the state
on the delta joints and normalised (``finish`` in reverse). Steps past the episode end repeat
the last action and are masked out of the loss. Videos are decoded once and kept resized to the
model's image size (uint8), which is what the pipeline would produce from the full frame.

Axis letters: N frames, T episode length, H horizon, U unified width, A model action width,
C camera slots, S image side.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import logging
import pathlib

from embodiment_adapters import EmbodimentAdapter, unified
import numpy as np
from pi0_policy.data import layout
from pi0_policy.data.reader import DatasetReader
from pi0_policy.model.config import Pi0Config
from pi0_policy.runtime import transforms
from pi0_policy.runtime.pipeline import Pi0Pipeline
from pi0_policy.runtime.tokenizer import PromptTokenizer
import torch

_LOG = logging.getLogger(__name__)

# Frames used for the norm statistics (evenly spaced over the dataset when it has more).
MAX_STATS_FRAMES = 20_000


@dataclasses.dataclass
class EpisodeData:
    """One episode held in memory."""

    # The task text.
    task: str
    # (T, S) robot-order states.
    state: np.ndarray
    # (T, D) robot-order commanded actions.
    action: np.ndarray
    # Camera name -> (T, S, S, 3) uint8 frames already resized with padding to the model size.
    images: dict[str, np.ndarray]


def load_episodes(readers: Sequence[DatasetReader], adapter: EmbodimentAdapter,
                  image_size: int) -> list[EpisodeData]:
    """
    Read every episode, decoding the videos of the cameras the model uses.

    Raises:
        ValueError: When a dataset's state/action names differ from the robot config's.
    """
    used = [c.name for c in adapter.cameras if c.model_slot is not None]
    episodes = []
    for reader in readers:
        layout.check_names(f'Dataset {reader.root} state', reader.spec.state_names,
                           adapter.state_names)
        layout.check_names(f'Dataset {reader.root} action', reader.spec.action_names,
                           adapter.action_names)
        cams = [c for c in used if c in reader.cameras]
        for index in range(reader.num_episodes):
            ep = reader.episode(index)
            images = {}
            for cam in cams:
                frames = reader.video(index, cam)
                if len(frames) != ep.length:
                    raise ValueError(f'{reader.root} episode {index} camera {cam!r} decodes to '
                                     f'{len(frames)} frames for {ep.length} data rows.')
                images[cam] = transforms.resize_with_pad(frames, image_size, image_size)
            episodes.append(EpisodeData(ep.task, ep.state, ep.action, images))
    if not episodes:
        raise ValueError('The datasets hold no episode; record some first.')
    return episodes


def unified_chunk(adapter: EmbodimentAdapter, action: np.ndarray, t: int, horizon: int,
                  delta_mask: np.ndarray, unified_state: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """
    Return the (H, U) unified target chunk from frame t (delta joints relative to the state).

    Returns:
        (chunk (H, U) float64, valid (H,) bool: False for steps past the episode end).
    """
    idx = np.arange(t, t + horizon)
    valid = idx < len(action)
    chunk = adapter.actions_to_unified(action[np.minimum(idx, len(action) - 1)])  # (H, U)
    return transforms.absolute_to_delta(chunk, unified_state, delta_mask), valid


def compute_norm_stats(episodes: Sequence[EpisodeData], adapter: EmbodimentAdapter,
                       delta_mask: np.ndarray, horizon: int
                       ) -> dict[str, transforms.NormStats]:
    """Return the state and action statistics (unified layout, as the pipeline normalises)."""
    frames = [(e, t) for e in episodes for t in range(len(e.state))]
    if len(frames) > MAX_STATS_FRAMES:
        pick = np.linspace(0, len(frames) - 1, MAX_STATS_FRAMES).round().astype(int)
        frames = [frames[i] for i in pick]
    states, actions = [], []
    for ep, t in frames:
        state_u = adapter.state_to_unified(ep.state[t])
        chunk, valid = unified_chunk(adapter, ep.action, t, horizon, delta_mask, state_u)
        states.append(state_u)
        actions.append(chunk[valid])
    return {transforms.STATE_KEY: _stats(np.stack(states)),
            transforms.ACTIONS_KEY: _stats(np.concatenate(actions))}


def _stats(x: np.ndarray) -> transforms.NormStats:
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return transforms.NormStats(mean=x.mean(0), std=x.std(0), q01=q01, q99=q99)


def write_norm_stats(path: pathlib.Path, norm_stats: dict[str, transforms.NormStats]) -> None:
    """Write openpi's ``norm_stats.json`` (``{"norm_stats": {key: {mean, std, q01, q99}}}``)."""
    data = {transforms.NORM_STATS_ROOT_KEY: {
        key: {f.name: np.asarray(getattr(s, f.name)).tolist()
              for f in dataclasses.fields(s) if getattr(s, f.name) is not None}
        for key, s in norm_stats.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


class TrainingSet:
    """Index every frame and build model batches."""

    def __init__(self, episodes: Sequence[EpisodeData], pipeline: Pi0Pipeline,
                 config: Pi0Config) -> None:
        """
        Bind the episodes to a pipeline (its normaliser holds the dataset's statistics).

        Args:
            episodes: From ``load_episodes``.
            pipeline: Built for the model's sizes and the robot's adapter.
            config: The model architecture (horizon, widths).
        """
        self.episodes = list(episodes)
        self.pipeline = pipeline
        self.config = config
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep.state))]

    def __len__(self) -> int:
        """Return the number of frames N."""
        return len(self.index)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Return the model inputs and target of frame i (numpy, unbatched)."""
        e, t = self.index[i]
        ep = self.episodes[e]
        observation = {'images': {cam: frames[t] for cam, frames in ep.images.items()},
                       'state': ep.state[t], 'prompt': ep.task}
        inputs = self.pipeline.prepare(observation)
        chunk, valid = unified_chunk(self.pipeline.adapter, ep.action, t,
                                     self.config.action_horizon, self.pipeline.delta_mask,
                                     inputs.unified_state)
        actions = unified.pad(self.pipeline.normalizer.normalize_actions(chunk),
                              self.config.action_dim)
        return {'images': inputs.images, 'image_masks': inputs.image_masks,
                'tokens': inputs.tokens, 'token_masks': inputs.token_masks,
                'state': inputs.state, 'actions': actions.astype(np.float32),
                'action_valid': valid}

    def batch(self, indices: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        """Stack samples into tensors on a device."""
        samples = [self.sample(int(i)) for i in indices]
        return {k: torch.from_numpy(np.stack([s[k] for s in samples])).to(device)
                for k in samples[0]}


def make_pipeline(adapter: EmbodimentAdapter, tokenizer: PromptTokenizer,
                  norm_stats: dict[str, transforms.NormStats], config: Pi0Config,
                  action_mode: str) -> Pi0Pipeline:
    """Build the inference pipeline with the dataset's statistics."""
    normalizer = transforms.Normalizer(state=norm_stats[transforms.STATE_KEY],
                                       actions=norm_stats[transforms.ACTIONS_KEY])
    return Pi0Pipeline(adapter, tokenizer, normalizer, image_size=config.vision.image_size,
                       num_cameras=config.num_cameras, state_dim=config.state_dim,
                       action_dim=config.action_dim, action_mode=action_mode)
