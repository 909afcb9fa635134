"""
Write episodes into a LeRobotDataset v3 folder, one episode at a time, crash-safe.

An episode streams into ``.staging/`` (videos are encoded frame by frame). ``save`` renames its
finished data and video files into place, rewrites the episode table, tasks and statistics
through temporary files, and writes ``meta/info.json`` last: ``info.json``'s ``total_episodes``
is the commit point. Opening a folder again drops whatever a crash left behind it (the staging
folder, table rows and files of episodes past ``total_episodes``), so a crash or Ctrl-C in the
middle of an episode loses that episode and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
import contextlib
import dataclasses
import logging
import pathlib
import shutil
from typing import Any

import numpy as np
from pi0_policy.data import layout, stats, tables
from pi0_policy.data.video import check_encoder, VideoEncoder

_LOG = logging.getLogger(__name__)

STAGING_DIR = '.staging'
# Image statistics use every k-th frame, downsampled by this factor per side.
STATS_IMAGE_STRIDE = 4
# Column prefix of the per-episode recording report in the episode table.
REPORT_PREFIX = 'recording/'


@dataclasses.dataclass(frozen=True)
class SavedEpisode:
    """What ``EpisodeWriter.save`` wrote."""

    # Index of the episode in the dataset.
    index: int
    # Number of frames.
    length: int
    # The task text.
    task: str


class DatasetWriter:
    """Create or extend one dataset folder (one writer per folder at a time)."""

    def __init__(self, root: str | pathlib.Path, spec: layout.DatasetSpec | None = None) -> None:
        """
        Open a dataset folder for writing, creating it or recovering it after a crash.

        Args:
            root: The dataset folder.
            spec: Rate, names and cameras; required for a new folder, checked against an
                existing one (None: take the existing one's).

        Raises:
            ValueError: When a new folder has no spec, or the spec differs from the dataset's.
        """
        self.root = pathlib.Path(root)
        info_path = self.root / layout.INFO_PATH
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
        if info_path.is_file():
            existing = layout.DatasetSpec.from_info(layout.read_json(info_path))
            if spec is not None:
                _check_same(spec, existing, self.root)
            self.spec = existing if spec is None else dataclasses.replace(
                existing, video_codec=spec.video_codec)
            info = layout.read_json(info_path)
            self._total = int(info['total_episodes'])
            self._video_info = {name: info['features'][layout.camera_key(name)].get('info', {})
                                for name in self.spec.cameras}
            self._recover()
        else:
            if spec is None:
                raise ValueError(f'{self.root} is not a dataset yet (no {layout.INFO_PATH}); '
                                 'pass a DatasetSpec to create it.')
            if self.root.exists() and any(self.root.iterdir()):
                raise ValueError(f'{self.root} exists, is not empty and holds no '
                                 f'{layout.INFO_PATH}; choose a new or empty folder.')
            self.spec = spec
            self._total = 0
            self._video_info = {}
            self._rows: list[dict[str, Any]] = []
            self._tasks: list[str] = []
            self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        check_encoder(self.spec.video_codec)
        self._open: EpisodeWriter | None = None

    @property
    def num_episodes(self) -> int:
        """Return the number of saved episodes."""
        return self._total

    @property
    def num_frames(self) -> int:
        """Return the number of saved frames."""
        return int(self._rows[-1]['dataset_to_index']) if self._rows else 0

    def start_episode(self, task: str) -> EpisodeWriter:
        """
        Begin a new episode.

        Raises:
            RuntimeError: When another episode is still open (save or discard it first).
            ValueError: On an empty task.
        """
        if self._open is not None:
            raise RuntimeError('An episode is already being recorded; save() or discard() it '
                               'before starting another.')
        if not task or not task.strip():
            raise ValueError('The task instruction is empty; give the task in words, e.g. '
                             '"transfer the cube".')
        self._open = EpisodeWriter(self, self._total, task.strip())
        return self._open

    # ------------------------------------------------------------------------------ internals
    def _recover(self) -> None:
        """Load the tables and drop everything past the committed episode count."""
        rows = tables.read_episodes(self.root)
        stale = [r for r in rows if r[layout.EPISODE_INDEX] >= self._total]
        self._rows = [r for r in rows if r[layout.EPISODE_INDEX] < self._total]
        if len(self._rows) != self._total:
            raise ValueError(f'{self.root}: info.json counts {self._total} episodes but the '
                             f'episode table holds {len(self._rows)}; the dataset is damaged.')
        tasks_path = self.root / layout.TASKS_PATH
        self._tasks = tables.read_tasks(tasks_path) if tasks_path.is_file() else []
        self._episode_stats = [_row_stats(r) for r in self._rows]
        for path in [*self.root.glob('data/chunk-*/file-*.parquet'),
                     *self.root.glob('videos/*/chunk-*/file-*.mp4')]:
            chunk = int(path.parent.name.split('-')[1])
            file = int(path.stem.split('-')[1])
            if chunk * layout.CHUNKS_SIZE + file >= self._total:
                path.unlink()  # a file of an episode whose commit did not finish
        if stale:
            _LOG.warning('%s: dropped %d uncommitted episode(s) left by an interrupted save.',
                         self.root, len(stale))
            self._write_episodes()

    def _close(self, episode: EpisodeWriter) -> None:
        """Forget the open episode."""
        if self._open is episode:
            self._open = None

    def _commit(self, episode: EpisodeWriter, data: Any, staged: dict[str, pathlib.Path],
                ep_stats: dict[str, dict[str, np.ndarray]],
                report: Mapping[str, Any]) -> None:
        """Move the staged files into place and rewrite the metadata (info.json last)."""
        index = episode.index
        files = layout.episode_files(self.spec, index)
        for key, src in staged.items():
            dst = self.root / files[key]
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)
        if episode.task not in self._tasks:
            self._tasks.append(episode.task)
            tables.write_table(self.root / layout.TASKS_PATH, tables.tasks_table(self._tasks))
        start = self.num_frames
        chunk, file = layout.chunk_file(index)
        row: dict[str, Any] = {
            layout.EPISODE_INDEX: index, 'tasks': [episode.task], 'length': episode.length,
            'data/chunk_index': chunk, 'data/file_index': file,
            'dataset_from_index': start, 'dataset_to_index': start + episode.length,
        }
        for name in self.spec.cameras:
            key = layout.camera_key(name)
            row.update({f'videos/{key}/chunk_index': chunk, f'videos/{key}/file_index': file,
                        f'videos/{key}/from_timestamp': 0.0,
                        f'videos/{key}/to_timestamp': episode.length / self.spec.fps})
        row.update({'meta/episodes/chunk_index': 0, 'meta/episodes/file_index': 0})
        for feature, values in ep_stats.items():
            for stat, value in values.items():
                row[f'stats/{feature}/{stat}'] = np.asarray(value).tolist()
        for key, value in report.items():
            row[REPORT_PREFIX + key] = value
        self._rows.append(row)
        self._episode_stats.append(ep_stats)
        self._write_episodes()
        all_stats = stats.aggregate_all(self._episode_stats)
        layout.write_json_atomic(self.root / layout.STATS_PATH, stats.to_json(all_stats))
        self._total = index + 1
        info = layout.build_info(self.spec, total_episodes=self._total,
                                 total_frames=self.num_frames, total_tasks=len(self._tasks),
                                 video_info=self._video_info)
        layout.write_json_atomic(self.root / layout.INFO_PATH, info)

    def _write_episodes(self) -> None:
        """Rewrite the episode table (one file) atomically."""
        keys = dict.fromkeys(k for r in self._rows for k in r)  # union, first-seen order
        rows = [{k: r.get(k) for k in keys} for r in self._rows]
        path = self.root / layout.EPISODES_PATH.format(chunk_index=0, file_index=0)
        tables.write_table(path, tables.episodes_table(rows))


class EpisodeWriter:
    """One episode being recorded: frames stream in, then ``save`` or ``discard``."""

    def __init__(self, dataset: DatasetWriter, index: int, task: str) -> None:
        """Create the staging folder and one video encoder per camera (use start_episode)."""
        self._dataset = dataset
        self.index = index
        self.task = task
        self.length = 0
        spec = dataset.spec
        self._staging = dataset.root / STAGING_DIR / f'episode-{index:06d}'
        self._staging.mkdir(parents=True, exist_ok=True)
        self._videos = {name: VideoEncoder(self._staging / f'{name}.mp4', fps=spec.fps,
                                           height=h, width=w, encoder=spec.video_codec)
                        for name, (h, w) in spec.cameras.items()}
        self._state: list[np.ndarray] = []
        self._action: list[np.ndarray] = []
        self._samples: dict[str, list[np.ndarray]] = {name: [] for name in spec.cameras}
        self._closed = False

    def add_frame(self, state: np.ndarray, action: np.ndarray,
                  images: Mapping[str, np.ndarray]) -> None:
        """
        Append one aligned frame (its timestamp is frame_index / fps).

        Args:
            state: (S,) state in the dataset's state_names order.
            action: (D,) commanded action in action_names order.
            images: Camera name -> (H, W, 3) uint8 RGB, every camera of the dataset.

        Raises:
            RuntimeError: After save/discard.
            ValueError: On a wrong vector length, a non-finite value or a missing camera.
        """
        if self._closed:
            raise RuntimeError('This episode was already saved or discarded.')
        spec = self._dataset.spec
        state = _vector(state, len(spec.state_names), 'state')
        action = _vector(action, len(spec.action_names), 'action')
        missing = sorted(set(spec.cameras) - set(images))
        if missing:
            raise ValueError(f'Frame lacks the cameras {missing}; every frame needs an image '
                             f'of each dataset camera {sorted(spec.cameras)}.')
        for name, encoder in self._videos.items():
            encoder.add(np.asarray(images[name]))
            if self.length % STATS_IMAGE_STRIDE == 0:
                s = STATS_IMAGE_STRIDE
                self._samples[name].append(np.asarray(images[name])[::s, ::s].copy())
        self._state.append(state)
        self._action.append(action)
        self.length += 1

    def save(self, report: Mapping[str, Any] | None = None) -> SavedEpisode:
        """
        Commit the episode to the dataset.

        Args:
            report: Scalars stored with the episode as ``recording/<key>`` columns (e.g. the
                alignment's dropped and late frame counts).

        Returns:
            What was saved.

        Raises:
            RuntimeError: After save/discard.
            ValueError: When the episode has no frame (it is discarded).
        """
        if self._closed:
            raise RuntimeError('This episode was already saved or discarded.')
        if self.length == 0:
            self.discard()
            raise ValueError('The episode has no frame; nothing was saved.')
        self._closed = True
        try:
            for encoder in self._videos.values():
                encoder.close()
            spec = self._dataset.spec
            first = self._dataset.num_frames
            frame_index = np.arange(self.length, dtype=np.int64)
            state, action = np.stack(self._state), np.stack(self._action)
            columns = {
                layout.STATE: state, layout.ACTION: action,
                layout.TIMESTAMP: (frame_index / spec.fps).astype(np.float32),
                layout.FRAME_INDEX: frame_index,
                layout.EPISODE_INDEX: np.full(self.length, self.index, np.int64),
                layout.INDEX: first + frame_index,
                layout.TASK_INDEX: np.full(self.length, self._task_index(), np.int64),
            }
            data_file = self._staging / 'data.parquet'
            tables.write_table(data_file, tables.frames_table(columns))
            staged = {'data': data_file}
            staged.update({name: enc.path for name, enc in self._videos.items()})
            ep_stats = {layout.STATE: stats.vector_stats(state),
                        layout.ACTION: stats.vector_stats(action)}
            for key in (layout.TIMESTAMP, layout.FRAME_INDEX, layout.EPISODE_INDEX,
                        layout.INDEX, layout.TASK_INDEX):
                ep_stats[key] = stats.vector_stats(columns[key].reshape(-1, 1))
            for name, frames in self._samples.items():
                ep_stats[layout.camera_key(name)] = stats.image_stats(np.stack(frames))
            self._dataset._commit(self, columns, staged, ep_stats, dict(report or {}))
        finally:
            self._cleanup()
        return SavedEpisode(index=self.index, length=self.length, task=self.task)

    def discard(self) -> None:
        """Drop the episode (idempotent)."""
        self._closed = True
        for encoder in self._videos.values():
            encoder.close()
        self._cleanup()

    def _task_index(self) -> int:
        """Return the task's index (the next free one for a new task)."""
        tasks = self._dataset._tasks
        return tasks.index(self.task) if self.task in tasks else len(tasks)

    def _cleanup(self) -> None:
        """Remove the staging folder and release the writer."""
        shutil.rmtree(self._staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another writer's leftovers
            self._staging.parent.rmdir()  # leave no empty staging folder in the dataset
        self._samples = {}
        self._dataset._close(self)


def _vector(value: np.ndarray, size: int, what: str) -> np.ndarray:
    """Check a (size,) finite vector and return it as float32."""
    array = np.asarray(value, np.float64).reshape(-1)
    if array.shape != (size,) or not np.isfinite(array).all():
        raise ValueError(f'Frame {what} is {array.tolist()}; expected {size} finite values.')
    return array.astype(np.float32)


def _check_same(spec: layout.DatasetSpec, existing: layout.DatasetSpec,
                root: pathlib.Path) -> None:
    """Raise ValueError when a spec does not match an existing dataset."""
    layout.check_names('State', spec.state_names, existing.state_names)
    layout.check_names('Action', spec.action_names, existing.action_names)
    if spec.fps != existing.fps or dict(spec.cameras) != dict(existing.cameras):
        raise ValueError(
            f'{root} holds fps {existing.fps} and cameras {dict(existing.cameras)}; got fps '
            f'{spec.fps} and cameras {dict(spec.cameras)}. Record into a new dataset folder.')


def _row_stats(row: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Rebuild an episode's statistics from its ``stats/<feature>/<stat>`` columns."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in row.items():
        if key.startswith('stats/') and value is not None:
            feature, _, stat = key[len('stats/'):].rpartition('/')
            out.setdefault(feature, {})[stat] = np.asarray(value, np.float64)
    return out
