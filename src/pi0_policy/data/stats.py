"""
Feature statistics of a LeRobot dataset (``meta/stats.json``, per-episode ``stats/`` columns).

Each feature gets min, max, mean, std, count and the quantiles q01, q10, q50, q90, q99 over its
frames; images get per-channel values in [0, 1] with shape (3, 1, 1), from a subsample of frames.
Episode statistics combine into dataset statistics exactly for min/max/mean/std (parallel
variance) and as count-weighted averages for the quantiles (LeRobot's rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Quantiles recorded (LeRobot 0.6.1's default list) and their keys.
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f'q{round(q * 100):02d}' for q in QUANTILES)
# Frames of an episode used for image statistics (evenly spaced).
MAX_IMAGE_SAMPLES = 100
PIXEL_MAX = 255.0

Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """
    Compute the statistics of (N, D) values over the frames axis.

    Raises:
        ValueError: On an empty or non-2-D array.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f'Statistics need (frames, dims) values, got shape {x.shape}.')
    out = {'min': x.min(0), 'max': x.max(0), 'mean': x.mean(0), 'std': x.std(0),
           'count': np.array([x.shape[0]])}
    for key, q in zip(QUANTILE_KEYS, np.quantile(x, QUANTILES, axis=0)):
        out[key] = q
    return out


def image_stats(frames: np.ndarray) -> Stats:
    """Compute per-channel statistics of (T, H, W, 3) uint8 frames, shaped (3, 1, 1) in [0, 1]."""
    frames = np.asarray(frames)
    step = max(1, len(frames) // MAX_IMAGE_SAMPLES)
    pixels = frames[::step].reshape(-1, frames.shape[-1]).astype(np.float64) / PIXEL_MAX
    flat = vector_stats(pixels)
    out = {k: v.reshape(-1, 1, 1) for k, v in flat.items() if k != 'count'}
    out['count'] = np.array([len(frames)])
    return out


def aggregate(stats: Sequence[Mapping[str, np.ndarray]]) -> Stats:
    """
    Combine the statistics of several episodes of one feature.

    Raises:
        ValueError: On an empty list.
    """
    if not stats:
        raise ValueError('Cannot aggregate the statistics of zero episodes.')
    counts = np.array([float(np.asarray(s['count']).reshape(-1)[0]) for s in stats])
    total = counts.sum()
    shape = (-1,) + (1,) * np.asarray(stats[0]['mean']).ndim
    w = (counts / total).reshape(shape)
    means = np.stack([s['mean'] for s in stats])
    mean = (w * means).sum(0)
    var = (w * (np.stack([s['std'] for s in stats]) ** 2 + (means - mean) ** 2)).sum(0)
    out = {'min': np.min(np.stack([s['min'] for s in stats]), 0),
           'max': np.max(np.stack([s['max'] for s in stats]), 0),
           'mean': mean, 'std': np.sqrt(var), 'count': np.array([int(total)])}
    for key in QUANTILE_KEYS:
        if all(key in s for s in stats):
            out[key] = (w * np.stack([s[key] for s in stats])).sum(0)
    return out


def aggregate_all(episodes: Sequence[Mapping[str, Mapping[str, np.ndarray]]]
                  ) -> dict[str, Stats]:
    """Combine per-episode statistics of every feature into dataset statistics."""
    keys = episodes[0].keys() if episodes else ()
    return {k: aggregate([e[k] for e in episodes]) for k in keys}


def to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Return the statistics as nested lists (``stats.json``)."""
    return {feature: {k: np.asarray(v).tolist() for k, v in s.items()}
            for feature, s in stats.items()}


def from_json(data: Mapping[str, Mapping[str, Any]]) -> dict[str, Stats]:
    """Invert ``to_json``."""
    return {feature: {k: np.asarray(v, np.float64) for k, v in s.items()}
            for feature, s in data.items()}
