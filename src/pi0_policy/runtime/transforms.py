"""
Numeric input/output transforms of π0: images, normalization statistics and delta actions.

Axis letters: H/W image height/width, C cameras, T action horizon, U unified width, D any vector
width. Everything here is numpy; the pipeline turns the results into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
import enum
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

_LOG = logging.getLogger(__name__)

# Image channels (RGB) and the value range of uint8 pixels.
RGB_CHANNELS = 3
UINT8_MAX = 255.0
# Model-space value of a black pixel (uint8 0 mapped to [-1, 1]).
BLACK_MODEL_VALUE = -1.0
# uint8 pixel v to model space: v * PIXEL_SCALE - PIXEL_OFFSET, in float32 arithmetic.
PIXEL_SCALE = np.float32(2.0 / UINT8_MAX)
PIXEL_OFFSET = np.float32(1.0)
# π0 normalization eps (spec §6.3), used by both directions of both modes.
NORM_EPS = 1e-6
# norm_stats.json layout: <checkpoint>/assets/<asset_id>/norm_stats.json; openpi ids are dataset
# repo ids, so <asset_id> may be nested ('lerobot/aloha_sim_transfer_cube_human').
ASSETS_DIR_NAME = 'assets'
NORM_STATS_FILE_NAME = 'norm_stats.json'
NORM_STATS_ROOT_KEY = 'norm_stats'
STATE_KEY = 'state'
ACTIONS_KEY = 'actions'


# ----------------------------------------------------------------------------------------------
# Images


def check_rgb_image(image: np.ndarray, name: str = 'image') -> np.ndarray:
    """
    Check that an image is RGB HWC uint8.

    Args:
        image: the image (H, W, 3) uint8.
        name: what to call it in errors (e.g. the camera name).

    Returns:
        The image as a numpy array.

    Raises:
        ValueError: wrong type, shape or dtype.

    """
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f'{name}: expected an RGB image as a numpy array (H, W, 3) uint8, got '
            f'{type(image).__name__}; convert it first (ROS images: pi0_policy.ros.conversions).')
    if image.ndim != 3 or image.shape[-1] != RGB_CHANNELS or image.shape[0] == 0 \
            or image.shape[1] == 0:
        raise ValueError(
            f'{name}: expected shape (H, W, 3) (HWC RGB), got {image.shape}; transpose CHW '
            'images to HWC and drop any alpha channel.')
    if image.dtype != np.uint8:
        raise ValueError(
            f'{name}: expected dtype uint8 (0..255), got {image.dtype}; convert float images with '
            '(x * 255).round().astype(np.uint8).')
    return image


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """
    Resize an image to fit in (height, width) keeping its aspect ratio, centred on black.

    Bilinear (PIL) on uint8, as openpi-client's ``image_tools.resize_with_pad``: scale by
    ``r = max(w / width, h / height)``, resize to ``(int(h / r), int(w / r))`` and paste at
    offsets ``int((height - new_h) / 2)``, ``int((width - new_w) / 2)`` on a zero canvas (an odd
    leftover pixel goes to the bottom/right). An image already of the target size is returned
    unchanged. Strided views are accepted without a full-size copy: channels in reverse memory
    order (BGR data) are resized in memory order and reordered on the small result, and one
    channel broadcast to three (mono data) is resized once; both give the same bytes because
    PIL's bilinear filter treats each channel on its own.

    Args:
        image: (H, W, 3) uint8 or a batch (..., H, W, 3) uint8.
        height: target height in pixels.
        width: target width in pixels.

    Returns:
        (..., height, width, 3) uint8.

    """
    if image.ndim > 3:
        lead = image.shape[:-3]
        flat = image.reshape((-1,) + image.shape[-3:])
        out = np.stack([resize_with_pad(one, height, width) for one in flat])
        return out.reshape(lead + out.shape[1:])
    if image.shape[:2] == (height, width):
        return image
    resized, top, left = _resize_to_fit(image, height, width)
    canvas = np.zeros((height, width) + image.shape[2:], dtype=image.dtype)
    canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return canvas


def resize_with_pad_to_model(image: np.ndarray, height: int, width: int,
                             out: np.ndarray | None = None) -> np.ndarray:
    """
    Return ``image_to_model(resize_with_pad(image, height, width))``, fused.

    The same values, bit for bit, without the intermediate canvas: the padding is written as
    ``BLACK_MODEL_VALUE`` and only the resized pixels are converted.

    Args:
        image: (H, W, 3) uint8 (strided views as in :func:`resize_with_pad`).
        height: target height in pixels.
        width: target width in pixels.
        out: (3, height, width) float32 to write into (e.g. one camera slot of a batch);
            None allocates it.

    Returns:
        ``out``: (3, height, width) float32 in [-1, 1].

    Raises:
        ValueError: ``out`` has the wrong shape or dtype.

    """
    shape = (RGB_CHANNELS, height, width)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f'out has shape {out.shape} and dtype {out.dtype}; expected {shape} '
                         'float32 (3, height, width). Pass a slot of a float32 (C, 3, H, W) '
                         'array or None.')
    if image.shape[:2] == (height, width):
        resized, top, left = image, 0, 0
    else:
        resized, top, left = _resize_to_fit(image, height, width)
    new_h, new_w = resized.shape[:2]
    # Black bands: rows above/below, then columns left/right of the pasted image.
    out[:, :top] = BLACK_MODEL_VALUE
    out[:, top + new_h:] = BLACK_MODEL_VALUE
    out[:, top:top + new_h, :left] = BLACK_MODEL_VALUE
    out[:, top:top + new_h, left + new_w:] = BLACK_MODEL_VALUE
    _to_model(resized, out[:, top:top + new_h, left:left + new_w])
    return out


def _resize_to_fit(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """Resize (H, W, 3) uint8 to fit (height, width): (resized (h, w, 3), top, left)."""
    cur_h, cur_w = image.shape[:2]
    ratio = max(cur_w / width, cur_h / height)
    new_h = int(cur_h / ratio)
    new_w = int(cur_w / ratio)
    top = max(0, int((height - new_h) / 2))
    left = max(0, int((width - new_w) / 2))
    return _bilinear(image, new_h, new_w), top, left


def _bilinear(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """PIL-bilinear resize of (H, W, 3) uint8 to (new_h, new_w, 3), per channel."""
    channel_stride = image.strides[2]
    if channel_stride == 0:  # one channel broadcast to three: resize it once ('L' image)
        plane = np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, 0])).resize(
            (new_w, new_h), resample=Image.BILINEAR))  # (new_h, new_w)
        return np.broadcast_to(plane[:, :, None], (new_h, new_w, image.shape[2]))
    if channel_stride < 0:  # channels in reverse memory order (BGR): reorder the small result
        return _bilinear(image[:, :, ::-1], new_h, new_w)[:, :, ::-1]
    # ascontiguousarray copies only row-padded or interleaved (RGBA) views.
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
        (new_w, new_h), resample=Image.BILINEAR))


def image_to_model(image: np.ndarray) -> np.ndarray:
    """Map an (H, W, 3) uint8 image to the model's (3, H, W) float32 in [-1, 1]."""
    out = np.empty((RGB_CHANNELS,) + image.shape[:2], np.float32)  # (3, H, W)
    _to_model(image, out)
    return out


def _to_model(image: np.ndarray, out: np.ndarray) -> None:
    """Write (h, w, 3) uint8 into a (3, h, w) float32 view, scaled to [-1, 1], in place."""
    # uint8 -> float32 is exact, so this equals astype(float32) * scale - offset, with no
    # temporaries.
    np.multiply(np.transpose(image, (2, 0, 1)), PIXEL_SCALE, out=out, dtype=np.float32,
                casting='unsafe')
    np.subtract(out, PIXEL_OFFSET, out=out)


def black_image(height: int, width: int) -> np.ndarray:
    """Return a missing camera's image in model space: (3, H, W) float32 of -1."""
    return np.full((RGB_CHANNELS, height, width), BLACK_MODEL_VALUE, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Normalization


class NormMode(enum.Enum):
    """How vectors are normalized (π0 uses z-score; π0-FAST / π0.5 use quantiles)."""

    ZSCORE = 'zscore'
    QUANTILE = 'quantile'


@dataclass(frozen=True)
class NormStats:
    """Statistics of one vector (openpi ``NormStats``), in the vector's native width D."""

    # (D,) mean.
    mean: np.ndarray
    # (D,) standard deviation.
    std: np.ndarray
    # (D,) 1st percentile, or None.
    q01: np.ndarray | None = None
    # (D,) 99th percentile, or None.
    q99: np.ndarray | None = None

    @classmethod
    def from_dict(cls, data: dict, name: str = 'stats') -> NormStats:
        """
        Build from a ``{mean, std, q01?, q99?}`` mapping.

        Raises:
            ValueError: a key is missing or the vectors have different lengths.

        """
        missing = [k for k in ('mean', 'std') if k not in data]
        if missing:
            raise ValueError(
                f'Norm stats {name!r} lack {missing}; expected keys mean, std (and optionally '
                f'q01, q99), got {sorted(data)}.')
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ('mean', 'std', 'q01', 'q99')
                  if data.get(k) is not None}
        widths = {k: v.shape for k, v in arrays.items()}
        if any(v.ndim != 1 for v in arrays.values()) or len(set(widths.values())) != 1:
            raise ValueError(
                f'Norm stats {name!r} must be 1-D vectors of one length, got shapes {widths}.')
        return cls(**arrays)

    @property
    def width(self) -> int:
        """Return the number of dimensions the statistics cover."""
        return int(self.mean.shape[0])


def _covered(x: np.ndarray, stats: NormStats, mode: NormMode
             ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Return a float64 copy of x, the width W the stats cover and (offset, scale) over W dims."""
    out = np.array(x, dtype=np.float64)  # (..., D); x_norm = (x - offset) / scale on [:W]
    width = min(stats.width, out.shape[-1])
    if mode is NormMode.ZSCORE:
        return out, width, stats.mean[:width], stats.std[:width] + NORM_EPS
    if stats.q01 is None or stats.q99 is None:
        raise ValueError(
            'Quantile normalization needs q01 and q99 in norm_stats.json, which has only '
            'mean/std; use NormMode.ZSCORE (π0) or recompute the statistics with quantiles.')
    return out, width, stats.q01[:width], stats.q99[:width] - stats.q01[:width] + NORM_EPS


def normalize(x: np.ndarray, stats: NormStats, mode: NormMode = NormMode.ZSCORE) -> np.ndarray:
    """
    Normalize the leading dims of x that the statistics cover; leave the others unchanged.

    z-score: ``(x - mean) / (std + 1e-6)``; quantile: ``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1``.

    Args:
        x: (..., D) values.
        stats: statistics of width S; dims >= S of x are passed through, stats beyond D ignored.
        mode: normalization mode.

    Returns:
        (..., D) float64, normalized on the covered dims.

    """
    out, width, offset, scale = _covered(x, stats, mode)
    part = (out[..., :width] - offset) / scale
    out[..., :width] = part * 2.0 - 1.0 if mode is NormMode.QUANTILE else part
    return out


def unnormalize(x: np.ndarray, stats: NormStats, mode: NormMode = NormMode.ZSCORE) -> np.ndarray:
    """
    Invert :func:`normalize` on the leading dims the statistics cover.

    z-score: ``x * (std + 1e-6) + mean``; quantile: ``(x + 1) / 2 * (q99 - q01 + 1e-6) + q01``.

    Args:
        x: (..., D) normalized values.
        stats: statistics of width S.
        mode: normalization mode.

    Returns:
        (..., D) float64, in the units of the statistics on the covered dims.

    """
    out, width, offset, scale = _covered(x, stats, mode)
    part = out[..., :width]
    if mode is NormMode.QUANTILE:
        part = (part + 1.0) / 2.0
    out[..., :width] = part * scale + offset
    return out


def assets_dirs(checkpoint_dir: str | Path) -> list[Path]:
    """
    Return the folders that may hold a checkpoint's assets, in search order.

    ``<checkpoint_dir>/assets``, then ``<checkpoint_dir>/../assets``: openpi's JAX → PyTorch
    converter writes the weights into an output folder and leaves ``assets/`` next to the JAX
    ``params/``, i.e. in the parent when the output folder sits inside the openpi checkpoint.
    """
    root = Path(checkpoint_dir)
    return [root / ASSETS_DIR_NAME, root.resolve().parent / ASSETS_DIR_NAME]


def _ids_in(assets: Path) -> list[str]:
    """Return the asset ids under one assets folder that hold a norm_stats.json."""
    if not assets.is_dir():
        return []
    return sorted(path.parent.relative_to(assets).as_posix()
                  for path in assets.rglob(NORM_STATS_FILE_NAME)
                  if path.is_file() and path.parent != assets)


def list_asset_ids(checkpoint_dir: str | Path) -> list[str]:
    """
    Return the asset ids that hold a norm_stats.json, from the first of `assets_dirs` with any.

    openpi names assets by dataset repo id, so an id may be nested
    (``lerobot/aloha_sim_transfer_cube_human``); ids are POSIX paths relative to ``assets/``.
    """
    for assets in assets_dirs(checkpoint_dir):
        ids = _ids_in(assets)
        if ids:
            return ids
    return []


def _check_asset_id(asset_id: str) -> None:
    """Reject asset ids that would leave the assets folder."""
    parts = Path(asset_id).parts
    if not asset_id or Path(asset_id).is_absolute() or '..' in parts:
        raise ValueError(
            f'Asset id {asset_id!r} must be a non-empty path relative to the '
            f'{ASSETS_DIR_NAME}/ folder of the checkpoint, without "..", e.g. "trossen" or '
            '"lerobot/aloha_sim_transfer_cube_human".')


def find_norm_stats(checkpoint_dir: str | Path, asset_id: str | None = None) -> Path | None:
    """
    Locate ``assets/<asset_id>/norm_stats.json`` of a checkpoint (``asset_id`` may be nested).

    Searches the folders of `assets_dirs`: the checkpoint's own ``assets/`` first, then the one
    in its parent folder (where openpi's converter leaves it).

    Args:
        checkpoint_dir: the checkpoint folder.
        asset_id: the asset to use; None picks the only one present.

    Returns:
        The file, or None when the checkpoint has no statistics at all (and no asset_id was asked).

    Raises:
        ValueError: the asked asset id does not exist (the message names the exact file to copy
            and where), or several exist and none was chosen.

    """
    own, parent = assets_dirs(checkpoint_dir)
    if asset_id is not None:
        _check_asset_id(asset_id)
        for assets in (own, parent):
            path = assets / asset_id / NORM_STATS_FILE_NAME
            if path.is_file():
                if assets == parent:
                    _LOG.info('Norm stats found in the parent folder (openpi converter layout): '
                              '%s', path)
                return path
        target = own / asset_id / NORM_STATS_FILE_NAME
        raise ValueError(
            f'Asset id {asset_id!r} has no {NORM_STATS_FILE_NAME} (looked for '
            f'{str(target)!r} and {str(parent / asset_id / NORM_STATS_FILE_NAME)!r}); available '
            f'asset ids: {list_asset_ids(checkpoint_dir)}. Choose one of them (asset_id), or '
            f'copy {ASSETS_DIR_NAME}/{asset_id}/{NORM_STATS_FILE_NAME} of the openpi checkpoint '
            f'(the folder that holds params/) or training run to {str(target)!r}.')
    for assets in (own, parent):
        ids = _ids_in(assets)
        if len(ids) > 1:
            raise ValueError(
                f'Checkpoint {str(checkpoint_dir)!r} has norm stats for several asset ids {ids} '
                f'(in {str(assets)!r}); choose one with asset_id=<id> (or norm_stats_asset_id '
                'in the robot config).')
        if ids:
            return assets / ids[0] / NORM_STATS_FILE_NAME
    return None


def asset_id_of(checkpoint_dir: str | Path, path: Path) -> str:
    """Return the asset id of a norm_stats.json found by `find_norm_stats`."""
    for assets in assets_dirs(checkpoint_dir):
        if path.parent.is_relative_to(assets):
            return path.parent.relative_to(assets).as_posix()
    raise ValueError(f'{str(path)!r} is not under the assets folders '
                     f'{[str(d) for d in assets_dirs(checkpoint_dir)]}.')


def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """
    Read an openpi ``norm_stats.json`` (``{"norm_stats": {key: {mean, std, q01, q99}}}``).

    Returns:
        Statistics by key (``state``, ``actions``, ...).

    Raises:
        ValueError: the file is not valid JSON of that layout.

    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'Cannot read norm stats {str(path)!r}: {e}.') from e
    if not isinstance(data, dict) or not isinstance(data.get(NORM_STATS_ROOT_KEY), dict):
        raise ValueError(
            f'{str(path)!r} is not an openpi norm_stats.json: expected a top-level '
            f'{NORM_STATS_ROOT_KEY!r} object mapping keys to {{mean, std, q01, q99}}.')
    return {key: NormStats.from_dict(value, f'{path.name}:{key}')
            for key, value in data[NORM_STATS_ROOT_KEY].items()}


@dataclass(frozen=True)
class Normalizer:
    """State/action normalization of one checkpoint; identity where statistics are missing."""

    # Statistics of the unified state, or None for identity.
    state: NormStats | None = None
    # Statistics of the unified actions, or None for identity.
    actions: NormStats | None = None
    # z-score for π0.
    mode: NormMode = NormMode.ZSCORE
    # The norm_stats.json the statistics were read from; None for identity.
    source: Path | None = None
    # Its asset id (path of its folder relative to assets/); None for identity.
    asset_id: str | None = None

    @classmethod
    def from_checkpoint(
        cls, checkpoint_dir: str | Path | None, asset_id: str | None = None,
        mode: NormMode = NormMode.ZSCORE,
    ) -> Normalizer:
        """
        Load the statistics of a checkpoint.

        Args:
            checkpoint_dir: the checkpoint folder; None gives identity (the tiny random model).
            asset_id: ``assets/<asset_id>/norm_stats.json`` to use (may be nested); None picks
                the only one.
            mode: normalization mode.

        Returns:
            The normalizer.

        Raises:
            ValueError: the checkpoint has no norm stats, see :func:`find_norm_stats`, or a stats
                file without state or actions.

        """
        if checkpoint_dir is None:
            _LOG.warning('No checkpoint: state and actions are NOT normalized (identity).')
            return cls(mode=mode)
        path = find_norm_stats(checkpoint_dir, asset_id)
        if path is None:
            own, parent = assets_dirs(checkpoint_dir)
            raise ValueError(
                f'Checkpoint {str(checkpoint_dir)!r} has no norm stats: no '
                f'{ASSETS_DIR_NAME}/<asset_id>/{NORM_STATS_FILE_NAME} (at any depth) under '
                f'{str(own)!r} or {str(parent)!r}. π0 needs the state/action statistics it was '
                f'trained with; copy {ASSETS_DIR_NAME}/<asset_id>/{NORM_STATS_FILE_NAME} of the '
                'openpi checkpoint (the folder that holds params/) or training run to '
                f'{str(own / "<asset_id>" / NORM_STATS_FILE_NAME)!r} '
                '(openpi: scripts/compute_norm_stats.py) and set asset_id to <asset_id>.')
        stats = load_norm_stats(path)
        missing = [k for k in (STATE_KEY, ACTIONS_KEY) if k not in stats]
        if missing:
            raise ValueError(
                f'{str(path)!r} lacks statistics for {missing}; expected keys '
                f'{[STATE_KEY, ACTIONS_KEY]}, got {sorted(stats)}.')
        chosen = asset_id_of(checkpoint_dir, path)
        _LOG.info('Loaded norm stats of asset %r from %s (%s).', chosen, path, mode.value)
        return cls(state=stats[STATE_KEY], actions=stats[ACTIONS_KEY], mode=mode, source=path,
                   asset_id=chosen)

    @property
    def is_identity(self) -> bool:
        """Return whether no statistics are loaded."""
        return self.state is None and self.actions is None

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """Normalize a (..., U) state."""
        return np.asarray(state, np.float64) if self.state is None \
            else normalize(state, self.state, self.mode)

    def unnormalize_state(self, state: np.ndarray) -> np.ndarray:
        """Invert :meth:`normalize_state`."""
        return np.asarray(state, np.float64) if self.state is None \
            else unnormalize(state, self.state, self.mode)

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Normalize (..., T, U) actions."""
        return np.asarray(actions, np.float64) if self.actions is None \
            else normalize(actions, self.actions, self.mode)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Invert :meth:`normalize_actions`."""
        return np.asarray(actions, np.float64) if self.actions is None \
            else unnormalize(actions, self.actions, self.mode)


# ----------------------------------------------------------------------------------------------
# Delta actions


def _check_delta_shapes(actions: np.ndarray, state: np.ndarray, mask: np.ndarray) -> None:
    if state.shape[-1] != actions.shape[-1] or mask.shape != (actions.shape[-1],):
        raise ValueError(
            f'Delta transform needs actions (..., T, U), state (..., U) and mask (U,) of one '
            f'width, got actions {actions.shape}, state {state.shape}, mask {mask.shape}.')


def delta_to_absolute(
    actions: np.ndarray, state: np.ndarray, delta_mask: np.ndarray,
) -> np.ndarray:
    """
    Turn delta actions into absolute ones: ``a + state`` on the dims where delta_mask is True.

    Args:
        actions: (..., T, U) unnormalized actions.
        state: (..., U) unnormalized state the deltas are relative to.
        delta_mask: (U,) bool.

    Returns:
        (..., T, U) absolute actions.

    """
    actions = np.asarray(actions, np.float64)
    state = np.asarray(state, np.float64)
    mask = np.asarray(delta_mask, bool)
    _check_delta_shapes(actions, state, mask)
    return actions + np.where(mask, state, 0.0)[..., None, :]


def absolute_to_delta(
    actions: np.ndarray, state: np.ndarray, delta_mask: np.ndarray,
) -> np.ndarray:
    """Invert :func:`delta_to_absolute` (used to build training targets)."""
    actions = np.asarray(actions, np.float64)
    state = np.asarray(state, np.float64)
    mask = np.asarray(delta_mask, bool)
    _check_delta_shapes(actions, state, mask)
    return actions - np.where(mask, state, 0.0)[..., None, :]


# ----------------------------------------------------------------------------------------------
# Velocity actions


def integrate_velocities(
    actions: np.ndarray, state: np.ndarray, velocity_mask: np.ndarray, *,
    scale: np.ndarray, limit: np.ndarray, dt: float,
) -> np.ndarray:
    """
    Turn velocity actions into position targets on the dims where velocity_mask is True.

    Action k of a chunk is the command of step k (played at ``obs_time + k * dt``): the position
    the robot is to reach one step later. So on velocity dims ``target_k = state + dt *
    sum_{i <= k} clip(v_i * scale, -limit, limit)``, integrated from the measured state the chunk
    was conditioned on (DROID's controller does the same per step: target = measured position
    + velocity * step). Other dims are returned unchanged.

    Args:
        actions: (..., T, U) unnormalized actions; velocity dims in model units.
        state: (..., U) unnormalized state (unified positions) the chunk starts from.
        velocity_mask: (U,) bool.
        scale: (U,) robot units per second per model unit.
        limit: (U,) largest speed (robot units per second) integrated; faster values are clipped.
        dt: seconds between two actions of the chunk (1 / chunk rate).

    Returns:
        (..., T, U) actions with positions on the velocity dims.

    Raises:
        ValueError: mismatched widths or a non-positive dt.

    """
    actions = np.asarray(actions, np.float64)
    state = np.asarray(state, np.float64)
    mask = np.asarray(velocity_mask, bool)
    _check_delta_shapes(actions, state, mask)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f'Velocity integration needs a positive step dt in seconds, got {dt!r}; '
                         'check control_rate_hz of the robot config.')
    if not mask.any():
        return actions
    speeds = np.clip(actions * np.asarray(scale, np.float64), -np.asarray(limit, np.float64),
                     np.asarray(limit, np.float64))  # (..., T, U) robot units / s
    positions = state[..., None, :] + dt * np.cumsum(speeds, axis=-2)  # (..., T, U)
    return np.where(mask, positions, actions)
