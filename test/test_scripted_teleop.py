"""Scripted demonstrations through ROS 2: scripted teleop node -> command topics -> sim node."""

import json
import time

from embodiment_adapters import load_adapter
from gym_aloha.constants import START_ARM_POSE
import numpy as np
from pi0_policy.ros.recorder_node import RecorderNode
from pi0_policy.ros.sim.scripted_teleop import ScriptedTeleopNode
from pi0_policy.ros.sim.sim_node import AlohaSimNode
from pi0_policy.sim.aloha import ARM_DOF
from pi0_policy.sim.scripted import ARM_QPOS, EPISODE_STEPS, held_success
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Int32
from std_srvs.srv import Trigger

# A cube pose the scripted controller solves.
SEED = 1000
EPISODE_TIMEOUT = 240.0  # wall seconds; simulated time waits for the commands
SPIN_TIMEOUT = 10.0
# The right arm's joints at gym-aloha's start pose (its qpos: left arm, fingers, right arm).
RIGHT_START = START_ARM_POSE[ARM_QPOS:ARM_QPOS + ARM_DOF]


def test_scripted_teleop_transfers_the_cube_and_is_recorded(tmp_path):
    context = rclpy.Context()
    rclpy.init(context=context)
    sim = teleop = recorder = None
    try:
        sim = AlohaSimNode(context=context, parameter_overrides=[
            Parameter('seed', value=SEED), Parameter('sim_time', value=True),
            Parameter('image_height', value=32), Parameter('image_width', value=32),
            Parameter('camera_map', value='cam_high=top'),
            Parameter('camera_rate_hz', value=50.0)])
        recorder = RecorderNode(context=context, parameter_overrides=[
            Parameter('dataset_dir', value=str(tmp_path / 'dataset')),
            Parameter('task', value='transfer the cube to the other arm'),
            Parameter('cameras', value='cam_high'), Parameter('use_sim_time', value=True)])
        teleop = ScriptedTeleopNode(context=context, parameter_overrides=[
            Parameter('seed', value=SEED), Parameter('recorder', value='pi0_recorder')])
        listener = rclpy.create_node('reward_listener', context=context)
        rewards: list[int] = []
        listener.create_subscription(Int32, '/aloha_sim/reward',
                                     lambda msg: rewards.append(msg.data), 1000)
        reset = listener.create_client(Trigger, '/aloha_sim/reset_episode')
        states: list[JointState] = []
        images: list[Image] = []
        robot = load_adapter('aloha').config  # the sim node publishes on its topics
        right = next(t.topic for t in robot.joint_state_topics if t.prefix == 'right_')
        camera = next(c.topic for c in robot.cameras if c.name == 'cam_high')
        listener.create_subscription(JointState, right, states.append, 1000)
        listener.create_subscription(Image, camera, images.append, 1000)
        executor = SingleThreadedExecutor(context=context)
        for node in (sim, teleop, listener, recorder):
            executor.add_node(node)
        deadline = time.monotonic() + EPISODE_TIMEOUT
        while not teleop.done and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert teleop.done, 'the scripted episode did not finish in time'
        assert teleop.successes == [True]
        # The recorder saved the episode: what the sim executed from the command topics.
        deadline = time.monotonic() + SPIN_TIMEOUT
        while recorder.session.num_episodes < 1 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert recorder.session.num_episodes == 1
        info = json.loads((tmp_path / 'dataset' / 'meta' / 'info.json').read_text())
        assert info['total_frames'] > 0.9 * EPISODE_STEPS
        stats = sim.stats()
        assert stats['commands'] > 0 and stats['rejected'] == 0
        assert stats['max_reward'] == 4, f'rewards seen: {sorted(set(rewards))}'
        assert held_success(rewards)
        # The next episode: the next seed's cube, rewards counted afresh.
        future = reset.call_async(Trigger.Request())
        executor.spin_until_future_complete(future, timeout_sec=SPIN_TIMEOUT)
        assert future.result().success
        assert f'seed {SEED + 1}' in future.result().message
        stats = sim.stats()
        assert (stats['episode'], stats['seed'], stats['max_reward']) == (1, SEED + 1, 0)
        # The reset published the new episode's first observation although the sim does not
        # step without commands (lockstep): the arm at the start pose, a fresh image.
        deadline = time.monotonic() + SPIN_TIMEOUT
        while time.monotonic() < deadline and not (
                states and np.allclose(states[-1].position[:ARM_DOF], RIGHT_START, atol=1e-6)):
            executor.spin_once(timeout_sec=0.1)
        np.testing.assert_allclose(states[-1].position[:ARM_DOF], RIGHT_START, atol=1e-6)
        assert sim.stats()['steps'] == stats['steps']  # no step since the reset
        assert images and images[-1].header.stamp == states[-1].header.stamp
    finally:
        for node in (teleop, recorder, sim):
            if node is not None:
                node.destroy_node()
        rclpy.try_shutdown(context=context)
