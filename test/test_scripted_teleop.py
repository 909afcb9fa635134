"""Scripted demonstrations through ROS 2: scripted teleop node -> command topics -> sim node."""

import time

from pi0_policy.ros.sim.scripted_teleop import ScriptedTeleopNode
from pi0_policy.ros.sim.sim_node import AlohaSimNode
from pi0_policy.sim.scripted import held_success
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_msgs.msg import Int32
from std_srvs.srv import Trigger

# A cube pose the scripted controller solves.
SEED = 1000
EPISODE_TIMEOUT = 240.0  # wall seconds; simulated time waits for the commands
SPIN_TIMEOUT = 10.0


def test_scripted_teleop_transfers_the_cube_over_ros():
    context = rclpy.Context()
    rclpy.init(context=context)
    sim = teleop = None
    try:
        sim = AlohaSimNode(context=context, parameter_overrides=[
            Parameter('seed', value=SEED), Parameter('sim_time', value=True),
            Parameter('image_height', value=32), Parameter('image_width', value=32),
            Parameter('camera_map', value='cam_high=top'), Parameter('camera_rate_hz', value=1.0)])
        teleop = ScriptedTeleopNode(context=context,
                                    parameter_overrides=[Parameter('seed', value=SEED)])
        listener = rclpy.create_node('reward_listener', context=context)
        rewards: list[int] = []
        listener.create_subscription(Int32, '/aloha_sim/reward',
                                     lambda msg: rewards.append(msg.data), 1000)
        reset = listener.create_client(Trigger, '/aloha_sim/reset_episode')
        executor = SingleThreadedExecutor(context=context)
        for node in (sim, teleop, listener):
            executor.add_node(node)
        deadline = time.monotonic() + EPISODE_TIMEOUT
        while not teleop.done and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert teleop.done, 'the scripted episode did not finish in time'
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
    finally:
        for node in (teleop, sim):
            if node is not None:
                node.destroy_node()
        rclpy.try_shutdown(context=context)
