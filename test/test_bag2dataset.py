"""pi0-policy bag2dataset: rosbag2 files written here with rosbags (MCAP and sqlite3)."""

import numpy as np
from pi0_policy.cli import main
from pi0_policy.data.reader import DatasetReader
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

FPS = 10
SECONDS = 2.0
CAMERA_HZ = 20
JOINT_HZ = 50
COMMAND_HZ = 25
H, W = 48, 64
NS = 1_000_000_000
START_NS = 1_700_000_000 * NS
# A camera outage in the middle (images 0.95 to 1.25 s missing): the frames at 1.0, 1.1 and
# 1.2 s have no image within the 0.05 s tolerance; they are dropped and reported.
GAP = (0.92, 1.28)
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
T = TYPESTORE.types


def _header(t_ns):
    stamp = T['builtin_interfaces/msg/Time'](sec=t_ns // NS, nanosec=t_ns % NS)
    return T['std_msgs/msg/Header'](stamp=stamp, frame_id='')


def _messages():
    """Yield (topic, type, time ns, message) of the mock robot, sorted by time."""
    out = []
    for k in range(int(SECONDS * CAMERA_HZ)):
        t = k / CAMERA_HZ
        if GAP[0] < t < GAP[1]:
            continue
        t_ns = START_NS + round(t * NS)
        image = np.full(H * W * 3, (10 * k) % 250, np.uint8)
        msg = T['sensor_msgs/msg/Image'](header=_header(t_ns), height=H, width=W,
                                         encoding='rgb8', is_bigendian=0, step=W * 3, data=image)
        out.append(('/mock/camera/image_raw', 'sensor_msgs/msg/Image', t_ns, msg))
    for k in range(int(SECONDS * JOINT_HZ)):
        t_ns = START_NS + round(k / JOINT_HZ * NS)
        msg = T['sensor_msgs/msg/JointState'](
            header=_header(t_ns), name=['mock_joint1', 'mock_joint2', 'mock_joint3',
                                        'mock_gripper'],
            position=np.array([k / JOINT_HZ, 0.0, 0.0, 0.02]), velocity=np.zeros(0),
            effort=np.zeros(0))
        out.append(('/mock/joint_states', 'sensor_msgs/msg/JointState', t_ns, msg))
    for k in range(int(SECONDS * COMMAND_HZ)):
        t_ns = START_NS + round(k / COMMAND_HZ * NS)
        duration = T['builtin_interfaces/msg/Duration'](sec=0, nanosec=0)
        point = T['trajectory_msgs/msg/JointTrajectoryPoint'](
            positions=np.array([k / COMMAND_HZ, 0.1, 0.2]), velocities=np.zeros(0),
            accelerations=np.zeros(0), effort=np.zeros(0), time_from_start=duration)
        traj = T['trajectory_msgs/msg/JointTrajectory'](
            header=_header(0), joint_names=['mock_joint1', 'mock_joint2', 'mock_joint3'],
            points=[point])
        out.append(('/mock/arm_controller/joint_trajectory',
                    'trajectory_msgs/msg/JointTrajectory', t_ns, traj))
        layout = T['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
        grip = T['std_msgs/msg/Float64MultiArray'](layout=layout, data=np.array([0.04]))
        out.append(('/mock/gripper_controller/commands', 'std_msgs/msg/Float64MultiArray',
                    t_ns, grip))
    return sorted(out, key=lambda m: m[2])


def _write_bag(path, storage):
    with Writer(path, version=9, storage_plugin=storage) as writer:
        connections = {}
        for topic, msgtype, t_ns, msg in _messages():
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            writer.write(connections[topic], t_ns, TYPESTORE.serialize_cdr(msg, msgtype))


@pytest.mark.parametrize('storage', [StoragePlugin.MCAP, StoragePlugin.SQLITE3],
                         ids=['mcap', 'sqlite3'])
def test_bag_converts_like_a_live_recording(tmp_path, capsys, storage):
    """A bag becomes one episode: aligned frames, held commands, the outage reported."""
    bag = tmp_path / 'bag'
    _write_bag(bag, storage)
    out = tmp_path / 'ds'
    status = main(['bag2dataset', str(bag), '--robot', 'mock', '--out', str(out),
                   '--task', 'sweep', '--fps', str(FPS), '--max-drop-fraction', '0.5'])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert 'episode 0' in printed and '3 dropped' in printed
    reader = DatasetReader(out)
    ep = reader.episode(0)
    # Ticks 0.0..1.9 s: 20, less the 3 ticks (1.0, 1.1, 1.2 s) without a camera image.
    assert ep.length == 17 and ep.meta['recording/dropped_frames'] == 3
    assert ep.meta['recording/dropped/camera/cam_main'] == 3
    np.testing.assert_allclose(ep.timestamps, np.arange(17) / FPS, atol=1e-6)
    ticks = np.r_[np.arange(10), np.arange(13, 20)] / FPS
    np.testing.assert_allclose(ep.state[:, 0], ticks, atol=1e-6)  # joint 1 = time
    # The newest command up to tick + tolerance (25 Hz, no header stamp: the log time counts).
    tolerance = 0.5 / FPS
    np.testing.assert_allclose(ep.action[:, 0], np.floor((ticks + tolerance) * COMMAND_HZ
                                                         + 1e-6) / COMMAND_HZ, atol=1e-6)
    np.testing.assert_allclose(ep.action[:, 1:], [[0.1, 0.2, 0.04]] * 17, atol=1e-6)
    video = reader.video(0, 'cam_main')
    assert video.shape == (17, H, W, 3)
    assert abs(int(video[1, 0, 0, 0]) - 20) <= 4  # frame at 0.1 s = camera image 2


def test_bag_errors(tmp_path, capsys):
    """A missing bag or a bag without the robot's topics fails with a clear message."""
    status = main(['bag2dataset', str(tmp_path / 'none'), '--robot', 'mock', '--out',
                   str(tmp_path / 'ds'), '--task', 'x'])
    assert status == 1 and 'Cannot open rosbag2' in capsys.readouterr().err
    status = main(['bag2dataset', str(tmp_path / 'none'), '--robot', 'no_such_robot', '--out',
                   str(tmp_path / 'ds'), '--task', 'x'])
    assert status == 2
