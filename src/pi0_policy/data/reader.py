"""
Read a LeRobotDataset v3 folder: episodes, frames, decoded videos, tasks and statistics.

Works on folders written by ``pi0_policy.data.writer`` and by LeRobot (several episodes per file;
each episode's rows and video span are found through its ``meta/episodes`` entry).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
from pi0_policy.data import layout, stats, tables
from pi0_policy.data.video import decode_video


@dataclasses.dataclass(frozen=True)
class Episode:
    """The frames of one episode (videos decode on demand, see ``DatasetReader.video``)."""

    # Episode index.
    index: int
    # The task text.
    task: str
    # (T,) float32 seconds from the episode start.
    timestamps: np.ndarray
    # (T, S) float32 states.
    state: np.ndarray
    # (T, D) float32 commanded actions.
    action: np.ndarray
    # The episode's ``meta/episodes`` row (file indices, spans, recording report, stats).
    meta: dict[str, Any]

    @property
    def length(self) -> int:
        """Return the number of frames T."""
        return int(self.state.shape[0])


class DatasetReader:
    """Random access to the episodes of one dataset folder."""

    def __init__(self, root: str | pathlib.Path) -> None:
        """
        Open a dataset.

        Raises:
            ValueError: When the folder is not a readable LeRobotDataset v3.
        """
        self.root = pathlib.Path(root)
        self.info = layout.read_json(self.root / layout.INFO_PATH)
        self.spec = layout.DatasetSpec.from_info(self.info)
        total = int(self.info['total_episodes'])
        rows = [r for r in tables.read_episodes(self.root) if r[layout.EPISODE_INDEX] < total]
        if len(rows) != total:
            raise ValueError(f'{self.root}: info.json counts {total} episodes but the episode '
                             f'table holds {len(rows)}.')
        self._rows = rows
        tasks_path = self.root / layout.TASKS_PATH
        self.tasks = tables.read_tasks(tasks_path) if tasks_path.is_file() else []

    @property
    def fps(self) -> int:
        """Return the frame rate (Hz)."""
        return self.spec.fps

    @property
    def num_episodes(self) -> int:
        """Return the number of episodes."""
        return len(self._rows)

    @property
    def num_frames(self) -> int:
        """Return the number of frames over all episodes."""
        return int(self.info['total_frames'])

    @property
    def cameras(self) -> tuple[str, ...]:
        """Return the camera names."""
        return tuple(self.spec.cameras)

    def episode_meta(self, index: int) -> dict[str, Any]:
        """Return the ``meta/episodes`` row of an episode."""
        return dict(self._row(index))

    def episode(self, index: int) -> Episode:
        """
        Read one episode's frames.

        Raises:
            IndexError: On an index out of range.
            ValueError: When its data file is unreadable.
        """
        row = self._row(index)
        path = self.root / self.info['data_path'].format(
            chunk_index=row['data/chunk_index'], file_index=row['data/file_index'])
        table = tables.read_table(path, episode_index=index)
        order = np.argsort(tables.column_array(table, layout.FRAME_INDEX))
        tasks = row.get('tasks') or []
        return Episode(index=index, task=tasks[0] if tasks else '',
                       timestamps=tables.column_array(table, layout.TIMESTAMP)[order],
                       state=tables.column_array(table, layout.STATE)[order].astype(np.float32),
                       action=tables.column_array(table, layout.ACTION)[order].astype(
                           np.float32),
                       meta=dict(row))

    def video(self, index: int, camera: str) -> np.ndarray:
        """
        Decode one camera's frames of an episode.

        Returns:
            (T, H, W, 3) uint8 RGB.

        Raises:
            ValueError: On an unknown camera or an unreadable video.
        """
        if camera not in self.spec.cameras:
            raise ValueError(f'Unknown camera {camera!r}; the dataset has {list(self.cameras)}.')
        row = self._row(index)
        key = layout.camera_key(camera)
        path = self.root / self.info['video_path'].format(
            video_key=key, chunk_index=row[f'videos/{key}/chunk_index'],
            file_index=row[f'videos/{key}/file_index'])
        return decode_video(path, start_s=float(row[f'videos/{key}/from_timestamp']),
                            end_s=float(row[f'videos/{key}/to_timestamp']))

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Return ``meta/stats.json`` as arrays."""
        return stats.from_json(layout.read_json(self.root / layout.STATS_PATH))

    def _row(self, index: int) -> dict[str, Any]:
        """Return the table row of an episode."""
        if not 0 <= int(index) < len(self._rows):
            raise IndexError(f'Episode {index} does not exist; the dataset has '
                             f'{len(self._rows)} episodes (0..{len(self._rows) - 1}).')
        return self._rows[int(index)]
