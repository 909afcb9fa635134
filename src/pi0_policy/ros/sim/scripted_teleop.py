"""
Scripted teleoperation of the simulated ALOHA: scripted transfer-cube demonstrations as commands.

Stands in for a teleoperation leader: it publishes the scripted controller's joint commands
(:mod:`pi0_policy.sim.scripted`) on the robot config's command topics, so that the sim node
executes them and a recorder records them like any other commanded action. For each episode it
plans the demonstration of the sim's cube pose (seed ``seed + episode``, the sim node's
``~/reset_episode`` numbering), then sends command k when the sim's joint state of step k
arrives (lockstep with the sim, on either clock). After ``steps`` commands it resets the sim
for the next episode through ``/aloha_sim/reset_episode``; after ``episodes`` it exits.

With ``recorder`` set it drives a ``pi0_recorder`` node: ``~/start`` when an episode begins,
``~/stop`` (save) when it ends with the task success held (the sim's ``~/reward``), else
``~/discard`` -- so the dataset holds what the sim executed from the command topics.
"""

from embodiment_adapters import load_robot_config, make_adapter
import numpy as np
from pi0_policy.ros import conversions
from pi0_policy.ros.commands import CommandRouter
from pi0_policy.ros.params import ParamSpec
from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig
from pi0_policy.sim.scripted import (EndEffectorScene, EPISODE_STEPS, held_success,
                                     plan_transfer_cube)
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Int32
from std_srvs.srv import Trigger

NODE_NAME = 'scripted_teleop'
RESET_SERVICE = '/aloha_sim/reset_episode'
REWARD_TOPIC = '/aloha_sim/reward'
QOS_DEPTH = 10
SERVICE_TIMEOUT = 10.0  # seconds

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec('robot', 'aloha', 'Robot config name or YAML path (command topics).',
              read_only=True),
    ParamSpec('seed', 0, "Cube-pose seed of the first episode (the sim node's 'seed').",
              range=(0, 2 ** 31 - 1), read_only=True),
    ParamSpec('episodes', 1, 'Episodes to perform; the sim is reset between them.',
              range=(1, 100000), read_only=True),
    ParamSpec('steps', EPISODE_STEPS, 'Control steps per episode.', range=(100, 100000),
              read_only=True),
    ParamSpec('control_rate_hz', 50.0, "The sim's control rate.", range=(1.0, 500.0),
              read_only=True),
    ParamSpec('recorder', '', 'Name of a pi0_recorder node to drive (its ~/start at the start '
              'of every episode, ~/stop or ~/discard at the end); empty: record nothing.',
              read_only=True),
    ParamSpec('keep_failed', False, 'Save episodes whose task success did not hold too.',
              read_only=True),
)


class ScriptedTeleopNode(Node):
    """Publish scripted demonstrations on the robot's command topics, in step with the sim."""

    def __init__(self, **kwargs) -> None:
        """Declare parameters, plan the first episode and follow the sim's joint states."""
        super().__init__(NODE_NAME, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        value = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        self._seed, self._episodes = int(value['seed']), int(value['episodes'])
        self._steps = int(value['steps'])
        self._period = 1.0 / float(value['control_rate_hz'])
        adapter = make_adapter(load_robot_config(value['robot']))
        self._router = CommandRouter(adapter.commands, adapter.action_names, (),
                                     control_period=self._period, base_frame_id='')
        self._pubs = [self.create_publisher(kind, spec.topic, QOS_DEPTH)
                      for kind, spec in zip(self._router.message_types, self._router.specs)]
        self._scene = EndEffectorScene(self._period)
        self._planner = AlohaSim(AlohaSimConfig(control_period=self._period, image_height=16,
                                                image_width=16))
        self._reset = self.create_client(Trigger, RESET_SERVICE)
        recorder, self._keep_failed = value['recorder'].strip('/'), bool(value['keep_failed'])
        self._recorder = {name: self.create_client(Trigger, f'/{recorder}/{name}')
                          for name in ('start', 'stop', 'discard')} if recorder else {}
        self.create_subscription(Int32, REWARD_TOPIC, self._on_reward, 1000)
        # Reward after every sim step of the current episode; per episode: whether it held.
        self.rewards: list[int] = []
        self.successes: list[bool] = []
        self.episode = 0
        self.done = False
        self._start_stamp: float | None = None
        self._commands = self._plan(self._seed)
        self._waiting_reset = False
        first = adapter.joint_state_topics[0].topic
        self.create_subscription(JointState, first, self._on_state, QOS_DEPTH)
        self.get_logger().info(f'Scripted teleop: {self._episodes} episode(s) from seed '
                               f'{self._seed}, {self._steps} steps each.')

    def _plan(self, seed: int) -> np.ndarray:
        """Return the (T, D) commands of the episode of ``seed``."""
        episode = plan_transfer_cube(seed, self._steps, scene=self._scene, sim=self._planner)
        self.get_logger().info(f'Planned seed {seed}: reward {episode.planned_reward} in the '
                               'planning sim.')
        return episode.commands(self._planner.config.gripper)

    def _on_state(self, msg: JointState) -> None:
        """Send the command of the sim step this joint state belongs to."""
        if self.done or self._waiting_reset:
            return
        stamp = conversions.to_seconds(msg.header.stamp)
        if self._start_stamp is None:
            self._start_stamp = stamp
            self.rewards = []
            self._call_recorder('start')
        step = int(round((stamp - self._start_stamp) / self._period))
        if step < len(self._commands):
            for pub, message in zip(self._pubs, self._router.messages(
                    self._commands[step], msg.header.stamp)):
                if message is not None:
                    pub.publish(message)
            return
        self.successes.append(held_success(self.rewards))
        self._call_recorder('stop' if self.successes[-1] or self._keep_failed else 'discard')
        self.get_logger().info(f'Episode {self.episode}: max reward {max(self.rewards, default=0)}'
                               f', success held: {self.successes[-1]}.')
        self.episode += 1
        if self.episode >= self._episodes:
            self.done = True
            self.get_logger().info(f'Scripted teleop: {self.episode} episode(s) done.')
            return
        self._waiting_reset = True
        if not self._reset.wait_for_service(timeout_sec=SERVICE_TIMEOUT):
            self.get_logger().error(f'{RESET_SERVICE} is not available; stopping.')
            self.done = True
            return
        self._reset.call_async(Trigger.Request()).add_done_callback(self._on_reset)

    def _on_reward(self, msg: Int32) -> None:
        if self._start_stamp is not None and not self._waiting_reset:
            self.rewards.append(int(msg.data))

    def _call_recorder(self, service: str) -> None:
        """Call one of the recorder's services (when there is a recorder) and log failures."""
        client = self._recorder.get(service)
        if client is None:
            return
        if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT):
            self.get_logger().error(f'{client.srv_name} is not available.')
            return

        def done(future) -> None:
            result = future.result()
            if result is None or not result.success:
                self.get_logger().error(f'{client.srv_name} failed: '
                                        f'{result.message if result else "no answer"}')
        client.call_async(Trigger.Request()).add_done_callback(done)

    def _on_reset(self, future) -> None:
        """Plan the next episode once the sim has reset."""
        self._commands = self._plan(self._seed + self.episode)
        self._start_stamp = None
        self._waiting_reset = False

    def destroy_node(self) -> None:
        """Free the planning scenes, then destroy the node."""
        self._scene.close()
        self._planner.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Run the scripted teleop until its episodes are done or Ctrl-C."""
    rclpy.init(args=args)
    node = None
    try:
        node = ScriptedTeleopNode()
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
