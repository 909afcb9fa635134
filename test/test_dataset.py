"""LeRobotDataset v3 writing/reading, crash recovery, time alignment and recording sessions."""

import json
import os
import signal
import subprocess
import sys
import types

import embodiment_adapters
import numpy as np
from pi0_policy.data import layout, tables
from pi0_policy.data.alignment import AlignmentConfig, FrameAligner, StreamKind
from pi0_policy.data.layout import DatasetSpec
from pi0_policy.data.reader import DatasetReader
from pi0_policy.data.recording import RecordingSession
from pi0_policy.data.writer import DatasetWriter, STAGING_DIR
import pyarrow.parquet as pq
import pytest

FPS = 10
H, W = 32, 48
# h264 is lossy: a flat grey frame comes back within a few levels.
VIDEO_ATOL = 4


def _spec(cameras=(('cam', (H, W)),)):
    return DatasetSpec(fps=FPS, robot_type='mock', state_names=('a', 'b'),
                       action_names=('a', 'b'), cameras=dict(cameras))


def _frame(i):
    return np.full((H, W, 3), (i * 20) % 250, np.uint8)


def _record(writer, task, length, offset=0.0):
    episode = writer.start_episode(task)
    for i in range(length):
        episode.add_frame(np.array([i, offset]), np.array([i + 1, offset]), {'cam': _frame(i)})
    return episode.save({'dropped_frames': 0})


def test_write_read_round_trip(tmp_path):
    """Frames, timestamps, tasks, videos and stats read back as written, in the v3 layout."""
    root = tmp_path / 'ds'
    writer = DatasetWriter(root, _spec())
    assert _record(writer, 'pick', 12).index == 0
    assert _record(writer, 'place', 7, offset=1.0).index == 1
    reader = DatasetReader(root)
    assert (reader.num_episodes, reader.num_frames, reader.fps) == (2, 19, FPS)
    assert reader.tasks == ['pick', 'place']
    ep = reader.episode(1)
    assert ep.task == 'place' and ep.length == 7
    np.testing.assert_allclose(ep.timestamps, np.arange(7) / FPS, atol=1e-6)
    np.testing.assert_array_equal(ep.state[:, 0], np.arange(7))
    np.testing.assert_array_equal(ep.action[:, 0], np.arange(1, 8))
    video = reader.video(1, 'cam')
    assert video.shape == (7, H, W, 3)
    for i in range(7):
        assert np.abs(video[i].astype(int) - _frame(i).astype(int)).max() <= VIDEO_ATOL
    stats = reader.stats()
    np.testing.assert_allclose(stats[layout.STATE]['mean'],
                               [np.r_[np.arange(12), np.arange(7)].mean(), 7 / 19])
    assert stats[layout.STATE]['count'][0] == 19
    assert stats[layout.camera_key('cam')]['mean'].shape == (3, 1, 1)
    # The files LeRobot 0.6.1 looks for, with its column names.
    info = json.loads((root / layout.INFO_PATH).read_text())
    assert info['codebase_version'] == 'v3.0' and info['total_episodes'] == 2
    assert info['features'][layout.camera_key('cam')]['info']['video.codec'] == 'h264'
    for rel in ('data/chunk-000/file-001.parquet', 'meta/tasks.parquet', 'meta/stats.json',
                'videos/observation.images.cam/chunk-000/file-001.mp4',
                'meta/episodes/chunk-000/file-000.parquet'):
        assert (root / rel).is_file(), rel
    row = reader.episode_meta(1)
    assert (row['dataset_from_index'], row['dataset_to_index']) == (12, 19)
    assert row['videos/observation.images.cam/to_timestamp'] == pytest.approx(0.7)
    schema = pq.read_schema(root / 'data/chunk-000/file-000.parquet')
    assert str(schema.field(layout.STATE).type) == 'fixed_size_list<element: float>[2]'
    pandas_meta = json.loads(pq.read_schema(root / layout.TASKS_PATH).metadata[b'pandas'])
    assert pandas_meta['index_columns'] == ['task']


def test_discard_and_reopen_extend(tmp_path):
    """A discarded episode leaves nothing; reopening appends after the saved episodes."""
    root = tmp_path / 'ds'
    writer = DatasetWriter(root, _spec())
    _record(writer, 'pick', 5)
    episode = writer.start_episode('pick')
    episode.add_frame([0, 0], [0, 0], {'cam': _frame(0)})
    episode.discard()
    assert not any((root / STAGING_DIR).glob('*'))
    writer = DatasetWriter(root)
    assert _record(writer, 'pick', 3).index == 1
    assert DatasetReader(root).num_frames == 8


def test_crash_loses_only_the_open_episode(tmp_path):
    """An interrupted episode and a half-committed one are dropped on reopen; others stay."""
    root = tmp_path / 'ds'
    writer = DatasetWriter(root, _spec())
    _record(writer, 'pick', 5)
    _record(writer, 'pick', 6)
    # A crash during episode 2: staging files exist, info.json still counts 2 ...
    crashed = writer.start_episode('pick')
    crashed.add_frame([0, 0], [0, 0], {'cam': _frame(0)})
    # ... and a crash in the middle of a commit: the data file was already renamed into place.
    stray = root / layout.DATA_PATH.format(chunk_index=0, file_index=2)
    stray.write_bytes(b'partial')
    info = json.loads((root / layout.INFO_PATH).read_text())
    info['total_episodes'] = 1  # simulate a commit of episode 1 that did not finish
    info['total_frames'] = 5
    (root / layout.INFO_PATH).write_text(json.dumps(info))
    reopened = DatasetWriter(root)
    assert reopened.num_episodes == 1
    assert not stray.exists()
    assert not any((root / STAGING_DIR).glob('*'))
    reader = DatasetReader(root)
    assert reader.num_episodes == 1 and reader.episode(0).length == 5
    assert _record(reopened, 'pick', 4).index == 1
    assert DatasetReader(root).episode(1).length == 4


# A writer process that saves one episode, then is killed in the middle of the second.
_KILLED_WRITER = r"""
import sys, time
import numpy as np
from pi0_policy.data.layout import DatasetSpec
from pi0_policy.data.writer import DatasetWriter
spec = DatasetSpec(fps=10, robot_type='mock', state_names=('a', 'b'), action_names=('a', 'b'),
                   cameras={'cam': (32, 48)})
writer = DatasetWriter(sys.argv[1], spec)
for length in (6, 1000):
    episode = writer.start_episode('pick')
    for i in range(length):
        episode.add_frame([i, 0], [i, 0], {'cam': np.zeros((32, 48, 3), np.uint8)})
        if length > 6 and i == 20:
            print('RECORDING', flush=True)
            time.sleep(60)
    episode.save()
"""
KILL_TIMEOUT_S = 60


def test_killed_process_loses_only_the_open_episode(tmp_path):
    """SIGKILL in the middle of an episode: the saved episode survives, the folder extends."""
    root = tmp_path / 'ds'
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, '-c', _KILLED_WRITER, str(root)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'RECORDING'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=KILL_TIMEOUT_S)
    assert any((root / STAGING_DIR).iterdir())  # the open episode was being written
    writer = DatasetWriter(root)
    assert writer.num_episodes == 1
    assert not any((root / STAGING_DIR).glob('*'))
    assert _record(writer, 'pick', 3).index == 1
    reader = DatasetReader(root)
    assert [reader.episode(i).length for i in range(2)] == [6, 3]


def test_writer_errors(tmp_path):
    """Bad specs, frames and states raise clear errors."""
    with pytest.raises(ValueError, match='even sizes'):
        _spec(cameras=(('cam', (31, 48)),))
    with pytest.raises(ValueError, match='pass a DatasetSpec'):
        DatasetWriter(tmp_path / 'new')
    writer = DatasetWriter(tmp_path / 'ds', _spec())
    episode = writer.start_episode('pick')
    with pytest.raises(RuntimeError, match='already being recorded'):
        writer.start_episode('pick')
    with pytest.raises(ValueError, match='expected 2 finite values'):
        episode.add_frame([0, np.nan], [0, 0], {'cam': _frame(0)})
    with pytest.raises(ValueError, match='lacks the cameras'):
        episode.add_frame([0, 0], [0, 0], {})
    with pytest.raises(ValueError, match='keep one size'):
        episode.add_frame([0, 0], [0, 0], {'cam': np.zeros((2, 2, 3), np.uint8)})
    with pytest.raises(ValueError, match='no frame'):
        episode.save()
    other = DatasetSpec(fps=FPS + 1, robot_type='mock', state_names=('a', 'b'),
                        action_names=('a', 'b'), cameras={'cam': (H, W)})
    _record(writer, 'pick', 2)
    with pytest.raises(ValueError, match='new dataset folder'):
        DatasetWriter(tmp_path / 'ds', other)


def test_tasks_table_reads_back():
    """tasks.parquet keeps the task order through the task_index column."""
    table = tables.tasks_table(['b', 'a'])
    assert table.column('task').to_pylist() == ['b', 'a']
    assert table.column('task_index').to_pylist() == [0, 1]


# ------------------------------------------------------------------------------- alignment
def _aligner(**kw):
    config = AlignmentConfig(fps=FPS, latency_s=0.0, **kw)
    return FrameAligner({'cam': StreamKind.SAMPLE, 'cmd': StreamKind.HOLD}, config,
                        start_time=0.0)


def test_alignment_matches_within_tolerance_and_counts_drops():
    """Each sample serves at most one frame; gaps drop the tick and are counted per stream."""
    al = _aligner(tolerance_s=0.02)
    al.push('cmd', 0.0, 'c0')
    for k in range(10):
        if k in (4, 5):
            continue  # the camera misses two frames
        al.push('cam', k / FPS + 0.01, f'img{k}')
    frames = al.flush()
    assert [f.values['cam'] for f in frames] == [f'img{k}' for k in range(10) if k not in (4, 5)]
    assert al.report.frames == 8 and al.report.dropped_frames == 2
    assert al.report.dropped == {'cam': 2, 'cmd': 0}
    # The one command is held for every frame: counted, not hidden.
    assert al.report.held == {'cmd': 7}
    assert al.report.drop_fraction == pytest.approx(0.2)
    # Live, the clock decides ticks whether or not data came: a dead camera drops frames.
    assert al.pop_ready(1.5) == [] and al.report.dropped['cam'] == 7


def test_alignment_late_and_warmup_and_no_duplicates():
    """Samples arriving after their tick are late; ticks before all streams are warmup."""
    al = _aligner()
    al.push('cam', 0.0, 'img0')  # no command yet: tick 0 is warmup
    al.push('cmd', 0.09, 'c')
    al.push('cam', 0.1, 'img1')
    assert [f.values['cam'] for f in al.pop_ready(0.16)] == ['img1']
    al.push('cam', 0.06, 'stale')  # for a tick already decided
    assert al.report.late['cam'] == 1 and al.report.warmup_ticks == 1
    # Slower camera than the frame rate: ticks without a fresh image drop, never repeat.
    al.push('cam', 0.3, 'img3')
    frames = al.pop_ready(0.5)
    assert [f.values['cam'] for f in frames] == ['img3']
    assert al.report.dropped['cam'] == 2  # ticks 0.2 and 0.4


def test_alignment_config_errors():
    """The tolerance may not exceed half a period."""
    with pytest.raises(ValueError, match='half the period'):
        AlignmentConfig(fps=FPS, tolerance_s=0.06)
    assert AlignmentConfig(fps=FPS).tolerance_s == pytest.approx(0.05)


# ------------------------------------------------------------------------ recording sessions
def _stamp(t):
    sec = int(t)
    return types.SimpleNamespace(sec=sec, nanosec=int(round((t - sec) * 1e9)))


def _image_msg(t, value):
    return types.SimpleNamespace(header=types.SimpleNamespace(stamp=_stamp(t)), height=48,
                                 width=64, encoding='rgb8', step=64 * 3,
                                 data=np.full(48 * 64 * 3, value, np.uint8).tobytes())


def _joint_msg(t, q):
    return types.SimpleNamespace(header=types.SimpleNamespace(stamp=_stamp(t)),
                                 name=['mock_joint1', 'mock_joint2', 'mock_joint3',
                                       'mock_gripper'], position=list(q))


def test_recording_session_mock_robot(tmp_path):
    """Messages of the mock robot's topics become aligned frames of state, action and images."""
    adapter = embodiment_adapters.load_adapter('mock')
    session = RecordingSession(tmp_path / 'ds', adapter, AlignmentConfig(fps=FPS, latency_s=0))
    assert {s.name for s in session.streams} == {
        'camera/cam_main', 'joints//mock/joint_states',
        'command//mock/arm_controller/joint_trajectory',
        'command//mock/gripper_controller/commands'}
    session.start('move')
    for k in range(20):
        t = 100.0 + k / FPS
        q = [0.01 * k, 0.0, 0.0, 0.02]
        session.push('/mock/camera/image_raw', t, _image_msg(t, 10 * k))
        session.push('/mock/joint_states', t, _joint_msg(t, q))
        point = types.SimpleNamespace(positions=[3.0, 1.0 + k, 2.0])
        traj = types.SimpleNamespace(joint_names=['mock_joint3', 'mock_joint1', 'mock_joint2'],
                                     points=[point])
        session.push('/mock/arm_controller/joint_trajectory', t, traj)
        session.push('/mock/gripper_controller/commands', t, types.SimpleNamespace(data=[0.04]))
        session.advance(t)
    saved, report = session.stop()
    assert saved.length == 20 and report.dropped_frames == 0
    ep = DatasetReader(tmp_path / 'ds').episode(0)
    np.testing.assert_allclose(ep.action[:, :4], np.c_[1.0 + np.arange(20), 2 * np.ones(20),
                                                       3 * np.ones(20), 0.04 * np.ones(20)],
                               rtol=1e-6)
    np.testing.assert_allclose(ep.state[:, 0], 0.01 * np.arange(20), atol=1e-6)
    assert ep.meta['recording/dropped_frames'] == 0
