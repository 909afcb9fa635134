"""pi0_recorder over real DDS: record seconds of the synthetic robot and read the dataset back."""

import ast
import pathlib
import time

import embodiment_adapters
import numpy as np
from pi0_policy.data import layout
from pi0_policy.data.reader import DatasetReader
from pi0_policy.ros.recorder_node import RecorderNode
from pi0_policy.ros.sim.synthetic_robot import SyntheticRobot
from pi0_policy.ros.spinner import Spinner
import pytest
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
FPS = 10
RECORD_S = 2.5
COMMAND_RATE_HZ = 20.0
SERVICE_TIMEOUT_S = 10.0
SPIN_PERIOD_S = 0.05
# Frames of RECORD_S at FPS, less start-up and what a loaded machine drops.
MIN_FRAMES = 10
LATENCY_S = 0.5
MAX_LAUNCH_LINES = 80


class Commander(Node):
    """A scripted controller: joint 1 follows the time, the gripper stays open."""

    def __init__(self) -> None:
        """Publish the mock robot's two command topics at COMMAND_RATE_HZ."""
        super().__init__('scripted_commander')
        self.arm = self.create_publisher(JointTrajectory,
                                         '/mock/arm_controller/joint_trajectory', 10)
        self.gripper = self.create_publisher(Float64MultiArray,
                                             '/mock/gripper_controller/commands', 10)
        self.sent: list[float] = []
        self.create_timer(1.0 / COMMAND_RATE_HZ, self._tick)

    def _tick(self) -> None:
        value = round(len(self.sent) * 0.01, 6)
        self.sent.append(value)
        msg = JointTrajectory(joint_names=['mock_joint1', 'mock_joint2', 'mock_joint3'])
        msg.points = [JointTrajectoryPoint(positions=[value, 0.5, -0.5])]
        self.arm.publish(msg)
        self.gripper.publish(Float64MultiArray(data=[0.04]))


@pytest.fixture
def ros(tmp_path):
    """Start the synthetic robot, the commander and the recorder on one spinning executor."""
    rclpy.init()
    adapter = embodiment_adapters.load_adapter('mock')
    robot = SyntheticRobot(adapter, camera_rate_hz=30.0, joint_rate_hz=50.0)
    commander = Commander()
    recorder = RecorderNode(parameter_overrides=[
        Parameter('robot', value='mock'), Parameter('dataset_dir', value=str(tmp_path / 'ds')),
        Parameter('task', value='sweep the arm'), Parameter('fps', value=FPS),
        # A loaded 2-core machine delivers messages late: wait longer, accept drops (counted).
        Parameter('latency_s', value=LATENCY_S), Parameter('max_drop_fraction', value=0.5)])
    client = Node('recorder_client')
    errors: list[BaseException] = []
    executor = Spinner(3, errors.append)
    for node in (robot, commander, recorder, client):
        executor.add_node(node)
    executor.start(SPIN_PERIOD_S)

    def call(service: str) -> Trigger.Response:
        cli = client.create_client(Trigger, f'/pi0_recorder/{service}')
        assert cli.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S)
        future = cli.call_async(Trigger.Request())
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.done(), f'{service} did not answer'
        return future.result()
    try:
        yield call, commander, recorder, tmp_path / 'ds'
    finally:
        executor.stop()  # waits for the callbacks before the nodes go
        for node in (robot, commander, recorder, client):
            node.destroy_node()
        rclpy.try_shutdown()
    assert not errors, f'a callback raised: {errors}'


def test_record_read_back(ros):
    """Start, record seconds, stop: frames, timestamps, video, stats and commands read back."""
    call, commander, recorder, root = ros
    assert not call('stop').success  # nothing open yet
    time.sleep(0.5)  # let every topic deliver once
    assert call('start').success
    assert not call('start').success  # one episode at a time
    time.sleep(RECORD_S)
    response = call('stop')
    assert response.success, response.message
    assert 'episode 0 saved' in response.message
    reader = DatasetReader(root)
    ep = reader.episode(0)
    assert MIN_FRAMES <= ep.length <= RECORD_S * FPS + 2
    np.testing.assert_allclose(ep.timestamps, np.arange(ep.length) / FPS, atol=1e-6)
    assert ep.task == 'sweep the arm'
    assert reader.video(0, 'cam_main').shape == (ep.length, 48, 64, 3)
    # The recorded action is what the commander sent (joint 1 grows with time, held in between).
    sent = np.asarray(commander.sent)
    assert all(np.abs(sent - value).min() < 1e-6 for value in ep.action[:, 0])
    assert np.all(np.diff(ep.action[:, 0]) >= 0) and ep.action[-1, 0] > ep.action[0, 0]
    np.testing.assert_allclose(ep.action[:, 1:], [[0.5, -0.5, 0.04]] * ep.length, atol=1e-6)
    assert ep.meta['recording/frames'] == ep.length
    assert f'{ep.length} frames' in response.message and 'dropped' in response.message
    assert reader.stats()[layout.STATE]['count'][0] == ep.length
    # A discarded episode leaves the dataset as it was.
    assert call('start').success
    time.sleep(0.5)
    assert call('discard').success
    assert DatasetReader(root).num_episodes == 1


def test_recorder_launch_file_is_thin_and_names_the_console_script():
    """launch/recorder.launch.py starts pi0_recorder with described arguments only."""
    text = (ROOT / 'launch' / 'recorder.launch.py').read_text()
    assert len(text.splitlines()) <= MAX_LAUNCH_LINES
    tree = ast.parse(text)
    setup = (ROOT / 'setup.py').read_text()
    assert "'pi0_recorder = pi0_policy.ros.recorder_node:main'" in setup
    executables = [k.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                   for k in n.keywords if k.arg == 'executable']
    assert executables == ['pi0_recorder']
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, 'id', '') == 'DeclareLaunchArgument']:
        described = {k.arg for k in call.keywords}
        assert {'default_value', 'description'} <= described
