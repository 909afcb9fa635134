"""
The LeRobotDataset v3.0 layout (what LeRobot 0.6.1 reads): paths, feature keys, ``info.json``.

A dataset folder holds ``meta/info.json`` (schema, fps, path templates), ``meta/stats.json``,
``meta/tasks.parquet``, ``meta/episodes/chunk-XXX/file-XXX.parquet`` (one row per episode),
``data/chunk-XXX/file-XXX.parquet`` (one row per frame) and
``videos/<camera key>/chunk-XXX/file-XXX.mp4``. This package writes one data file and one video
per camera for every episode (file index = episode index within its chunk), so an episode is
saved by renaming finished files into place; readers follow the per-episode file indices, so
datasets that pack several episodes per file (as LeRobot's own writer does) read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import json
import os
import pathlib
from typing import Any

CODEBASE_VERSION = 'v3.0'
INFO_PATH = 'meta/info.json'
STATS_PATH = 'meta/stats.json'
TASKS_PATH = 'meta/tasks.parquet'
EPISODES_DIR = 'meta/episodes'
CHUNK_FILE = 'chunk-{chunk_index:03d}/file-{file_index:03d}'
EPISODES_PATH = EPISODES_DIR + '/' + CHUNK_FILE + '.parquet'
DATA_PATH = 'data/' + CHUNK_FILE + '.parquet'
VIDEO_PATH = 'videos/{video_key}/' + CHUNK_FILE + '.mp4'
# Files per chunk folder (LeRobot's default) and its file-size hints (MB) recorded in info.json.
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_MB = 100
VIDEO_FILES_SIZE_MB = 200
# Feature keys (LeRobot constants).
STATE = 'observation.state'
ACTION = 'action'
IMAGES_PREFIX = 'observation.images.'
TIMESTAMP = 'timestamp'
FRAME_INDEX = 'frame_index'
EPISODE_INDEX = 'episode_index'
INDEX = 'index'
TASK_INDEX = 'task_index'
# Per-frame bookkeeping columns every dataset has, in LeRobot's order.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    TIMESTAMP: {'dtype': 'float32', 'shape': [1], 'names': None},
    FRAME_INDEX: {'dtype': 'int64', 'shape': [1], 'names': None},
    EPISODE_INDEX: {'dtype': 'int64', 'shape': [1], 'names': None},
    INDEX: {'dtype': 'int64', 'shape': [1], 'names': None},
    TASK_INDEX: {'dtype': 'int64', 'shape': [1], 'names': None},
}
# Video stream settings recorded per camera (``features[key]['info']``).
PIX_FMT = 'yuv420p'
# Temporary names are made unique with this suffix, then renamed into place.
TMP_SUFFIX = '.tmp'


def camera_key(camera: str) -> str:
    """Return the feature key of a camera, e.g. 'observation.images.cam_high'."""
    return IMAGES_PREFIX + camera


def chunk_file(episode_index: int) -> tuple[int, int]:
    """Return (chunk_index, file_index) of the files of an episode (one file per episode)."""
    return divmod(int(episode_index), CHUNKS_SIZE)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What one dataset holds: rate, robot, vector names and cameras (fixed for its lifetime)."""

    # Frame rate (Hz); every episode is aligned to it.
    fps: int
    # Robot name (LeRobot ``robot_type``), e.g. 'aloha'.
    robot_type: str
    # Names of the state vector entries (robot order), e.g. the adapter's state_names.
    state_names: tuple[str, ...]
    # Names of the action vector entries (robot command order), the adapter's action_names.
    action_names: tuple[str, ...]
    # Camera name -> (height, width) of its frames.
    cameras: Mapping[str, tuple[int, int]]
    # Video codec (PyAV encoder name), e.g. 'libx264' or 'libsvtav1'.
    video_codec: str = 'libx264'

    def __post_init__(self) -> None:
        """Validate the rate, the names and the camera sizes."""
        if not isinstance(self.fps, int) or self.fps <= 0:
            raise ValueError(f'fps must be a positive integer (Hz), got {self.fps!r}; LeRobot '
                             'datasets use an integer frame rate.')
        for what, names in (('state_names', self.state_names),
                            ('action_names', self.action_names)):
            if not names or len(set(names)) != len(names):
                raise ValueError(f'{what} must be non-empty and unique, got {list(names)}.')
        for name, (height, width) in self.cameras.items():
            if height <= 0 or width <= 0 or height % 2 or width % 2:
                raise ValueError(
                    f'Camera {name!r} frames are {height}x{width}; expected positive even sizes '
                    f'(the {PIX_FMT} video format halves the chroma). Crop or resize the camera.')
        object.__setattr__(self, 'state_names', tuple(self.state_names))
        object.__setattr__(self, 'action_names', tuple(self.action_names))
        object.__setattr__(self, 'cameras', {k: (int(h), int(w))
                                             for k, (h, w) in self.cameras.items()})

    def features(self, video_info: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, dict[str, Any]]:
        """Return the feature table of ``info.json`` (cameras, state, action, bookkeeping)."""
        features: dict[str, dict[str, Any]] = {}
        for name, (height, width) in self.cameras.items():
            info = {'video.height': height, 'video.width': width,
                    'video.codec': codec_name(self.video_codec), 'video.pix_fmt': PIX_FMT,
                    'video.is_depth_map': False, 'video.fps': self.fps, 'video.channels': 3,
                    'has_audio': False}
            info.update((video_info or {}).get(name, {}))
            features[camera_key(name)] = {'dtype': 'video', 'shape': [height, width, 3],
                                          'names': ['height', 'width', 'channels'],
                                          'info': info}
        features[STATE] = {'dtype': 'float32', 'shape': [len(self.state_names)],
                           'names': list(self.state_names)}
        features[ACTION] = {'dtype': 'float32', 'shape': [len(self.action_names)],
                            'names': list(self.action_names)}
        features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
        return features

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> DatasetSpec:
        """
        Rebuild the spec from a parsed ``info.json``.

        Raises:
            ValueError: When the file lacks the state or action feature or is not v3.0.
        """
        if info.get('codebase_version') != CODEBASE_VERSION:
            raise ValueError(
                f'Dataset codebase_version is {info.get("codebase_version")!r}; this reader '
                f'handles {CODEBASE_VERSION!r} (convert older datasets with LeRobot first).')
        features = info.get('features', {})
        missing = [k for k in (STATE, ACTION) if k not in features]
        if missing:
            raise ValueError(f'info.json lacks the features {missing}; expected {STATE!r} and '
                             f'{ACTION!r} (got {sorted(features)}).')
        cameras = {key[len(IMAGES_PREFIX):]: tuple(ft['shape'][:2])
                   for key, ft in features.items() if ft.get('dtype') == 'video'}
        codecs = {ft.get('info', {}).get('video.codec') for key, ft in features.items()
                  if ft.get('dtype') == 'video'}
        codec = ENCODERS.get(next(iter(codecs)), 'libx264') if len(codecs) == 1 else 'libx264'
        return cls(fps=int(info['fps']), robot_type=str(info.get('robot_type') or ''),
                   state_names=_names(features[STATE]), action_names=_names(features[ACTION]),
                   cameras=cameras, video_codec=codec)


# Codec name in the stream (what LeRobot records) <-> PyAV encoder.
ENCODERS = {'h264': 'libx264', 'av1': 'libsvtav1', 'hevc': 'libx265'}


def codec_name(encoder: str) -> str:
    """Return the stream codec name of a PyAV encoder ('libx264' -> 'h264')."""
    return next((codec for codec, enc in ENCODERS.items() if enc == encoder), encoder)


def _names(feature: Mapping[str, Any]) -> tuple[str, ...]:
    """Return a vector feature's entry names (generated when the dataset gives none)."""
    names = feature.get('names')
    if isinstance(names, Mapping):  # LeRobot also allows {'motors': [...]}
        names = next(iter(names.values()), None)
    if not names:
        names = [f'{i}' for i in range(int(feature['shape'][0]))]
    return tuple(str(n) for n in names)


def build_info(spec: DatasetSpec, *, total_episodes: int, total_frames: int, total_tasks: int,
               video_info: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Return the ``meta/info.json`` content for the dataset's current totals."""
    return {
        'codebase_version': CODEBASE_VERSION,
        'robot_type': spec.robot_type,
        'total_episodes': int(total_episodes),
        'total_frames': int(total_frames),
        'total_tasks': int(total_tasks),
        'chunks_size': CHUNKS_SIZE,
        'data_files_size_in_mb': DATA_FILES_SIZE_MB,
        'video_files_size_in_mb': VIDEO_FILES_SIZE_MB,
        'fps': spec.fps,
        'splits': {'train': f'0:{int(total_episodes)}'} if total_episodes else {},
        'data_path': DATA_PATH,
        'video_path': VIDEO_PATH if spec.cameras else None,
        'features': spec.features(video_info),
    }


def read_json(path: pathlib.Path) -> Any:
    """
    Read a JSON file.

    Raises:
        ValueError: When it is missing or not valid JSON (the message names the file).
    """
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'Cannot read {path}: {e}. Is this a LeRobotDataset v3 folder?') from e


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it over ``path`` (readers never see half)."""
    replace_atomic(path, json.dumps(data, indent=2).encode())


def replace_atomic(path: pathlib.Path, payload: bytes) -> None:
    """Write bytes to ``path`` through a temporary file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, 'wb') as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def episode_files(spec: DatasetSpec, episode_index: int) -> dict[str, str]:
    """Return the dataset-relative paths of an episode's data file and videos (by camera)."""
    chunk, file = chunk_file(episode_index)
    paths = {'data': DATA_PATH.format(chunk_index=chunk, file_index=file)}
    for name in spec.cameras:
        paths[name] = VIDEO_PATH.format(video_key=camera_key(name), chunk_index=chunk,
                                        file_index=file)
    return paths


def check_names(what: str, names: Sequence[str], expected: Sequence[str]) -> None:
    """Raise ValueError if two name lists differ (e.g. a robot config against a dataset)."""
    if tuple(names) != tuple(expected):
        raise ValueError(f"{what} names {list(names)} differ from the dataset's "
                         f'{list(expected)}; record into a new dataset folder.')
