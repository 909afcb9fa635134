"""
Parquet tables of a LeRobot v3 dataset through pyarrow: frames, episodes and tasks.

``meta/tasks.parquet`` is what pandas writes for a frame indexed by the task text with one
``task_index`` column (LeRobot reads it with ``pandas.read_parquet``); the pandas metadata that
marks ``task`` as the index is written here so that pandas is not needed to write it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import io
import json
import pathlib
from typing import Any

import numpy as np
from pi0_policy.data import layout
import pyarrow as pa
import pyarrow.parquet as pq

TASK_COLUMN = 'task'


def frames_table(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """
    Build a frames table: (N, D) arrays become fixed-size float32 lists, (N,) arrays scalars.

    Args:
        columns: Feature key -> values of every frame, in the order of the features.

    Returns:
        The table.
    """
    arrays = {}
    for key, values in columns.items():
        values = np.asarray(values)
        if values.ndim == 2:
            flat = pa.array(values.astype(np.float32).reshape(-1))
            arrays[key] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            arrays[key] = pa.array(values)
    return pa.table(arrays)


def table_bytes(table: pa.Table) -> bytes:
    """Serialise a table as parquet bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_table(path: pathlib.Path, table: pa.Table) -> None:
    """Write a parquet file atomically (temporary file, then rename)."""
    layout.replace_atomic(path, table_bytes(table))


def read_table(path: pathlib.Path, *, episode_index: int | None = None) -> pa.Table:
    """
    Read a parquet file, optionally only the rows of one episode.

    Raises:
        ValueError: When the file is missing or unreadable.
    """
    try:
        filters = None if episode_index is None else [
            (layout.EPISODE_INDEX, '=', int(episode_index))]
        return pq.read_table(path, filters=filters)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f'Cannot read parquet file {path}: {e}') from e


def column_array(table: pa.Table, key: str) -> np.ndarray:
    """Return a column as numpy: (N, D) for list columns, (N,) for scalars."""
    column = table.column(key).combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), -1) if len(column) else values.reshape(0, 0)
    return column.to_numpy(zero_copy_only=False)


def tasks_table(tasks: Sequence[str]) -> pa.Table:
    """Build ``meta/tasks.parquet``: task_index, with the task text as the pandas index."""
    table = pa.table({layout.TASK_INDEX: pa.array(range(len(tasks)), pa.int64()),
                      TASK_COLUMN: pa.array(list(tasks), pa.string())})
    pandas_meta = {
        'index_columns': [TASK_COLUMN],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode',
                            'numpy_type': 'object', 'metadata': {'encoding': 'UTF-8'}}],
        'columns': [
            {'name': layout.TASK_INDEX, 'field_name': layout.TASK_INDEX,
             'pandas_type': 'int64', 'numpy_type': 'int64', 'metadata': None},
            {'name': TASK_COLUMN, 'field_name': TASK_COLUMN, 'pandas_type': 'unicode',
             'numpy_type': 'object', 'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__},
        'pandas_version': '2.2.3',
    }
    return table.replace_schema_metadata({b'pandas': json.dumps(pandas_meta).encode()})


def read_tasks(path: pathlib.Path) -> list[str]:
    """
    Return the task texts ordered by task index.

    Raises:
        ValueError: When the file has no task column (or pandas index named 'task').
    """
    table = read_table(path)
    names = table.column_names
    text = TASK_COLUMN if TASK_COLUMN in names else next(
        (n for n in names if n.startswith('__index_level')), None)
    if text is None or layout.TASK_INDEX not in names:
        raise ValueError(f'{path} lacks the task text or {layout.TASK_INDEX!r} column '
                         f'(columns {names}).')
    order = np.argsort(column_array(table, layout.TASK_INDEX))
    texts = table.column(text).to_pylist()
    return [texts[i] for i in order]


def episodes_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build ``meta/episodes`` from one dict per episode (same keys in every row)."""
    keys = list(rows[0]) if rows else []
    return pa.table({k: pa.array([r[k] for r in rows]) for k in keys})


def read_episodes(root: pathlib.Path) -> list[dict[str, Any]]:
    """Return every episode row of ``meta/episodes`` (all files), sorted by episode index."""
    rows: list[dict[str, Any]] = []
    for path in sorted((root / layout.EPISODES_DIR).glob('chunk-*/file-*.parquet')):
        rows.extend(read_table(path).to_pylist())
    return sorted(rows, key=lambda r: r[layout.EPISODE_INDEX])
