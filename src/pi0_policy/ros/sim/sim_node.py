"""
Simulated bimanual ALOHA as a ROS 2 node: the MuJoCo scene of gym-aloha behind real ALOHA topics.

Topics, joint names and command interfaces come from the robot config (``robot``, default
``aloha``), so the sim looks to the pi0 node exactly like a ROS 2 Interbotix ALOHA under
ros2_control: one ``sensor_msgs/JointState`` per arm (waist ... wrist_rotate, gripper,
left_finger, right_finger), ``sensor_msgs/Image`` (rgb8) per camera, and it accepts
``trajectory_msgs/JointTrajectory`` (interpolated by ``time_from_start``, like a
joint_trajectory_controller) and ``std_msgs/Float64MultiArray`` (applied at once, like a
forward_command_controller). The last command is held when commands stop. Commands that drive
MuJoCo into an invalid state (a diverged physics) start the next episode, logged as an error and
counted (``diverged`` in the statistics), instead of stopping the sim.

Time (parameter ``sim_time``; every other node must set ``use_sim_time`` to the same value):

- ``sim_time: false`` (real time): a wall-clock timer steps the physics with the wall clock
  (several control periods in one tick when a tick was late) and stamps are ROS time. A machine
  that cannot keep up falls behind by more than ``MAX_CATCH_UP_PERIODS``: the backlog is dropped
  (the simulated world pauses) and counted as a lag event. Choose real time only when the sim
  costs well under one period per period (``pi0_sim_demo --time auto`` measures that).
- ``sim_time: true`` (simulated time): a stepping thread runs the physics on simulated time from
  0 and publishes ``/clock`` after every step. It steps as fast as it can, but never faster than
  ``real_time_factor`` simulated seconds per wall second, and never faster than the controller
  can serve: once commands arrive, it advances at most ``lockstep_lead`` seconds of simulated
  time beyond the last command of every command interface (lockstep with the pi0 node, which
  then ticks once per control period however slow the machine is). When no command arrives for
  ``LOCKSTEP_TIMEOUT`` wall seconds (a disabled or stopped controller) it runs on freely.
  No lag events: the simulated clock simply runs slower than the wall clock.
"""

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
import os
import signal
import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from embodiment_adapters.config import CommandSpec, CommandType, load_robot_config, RobotConfig
import numpy as np
from pi0_policy.ros import conversions
from pi0_policy.ros.params import ParamSpec
from pi0_policy.ros.process import exit_with_parent_if_asked
from pi0_policy.sim.aloha import (AlohaSim, AlohaSimConfig, SIDES, SimulationDiverged,
                                  steps_per_frame, TASK_SCENES, TrajectoryTarget)
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, Header, Int32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

NODE_NAME = 'aloha_sim'
# Task reward stage after every step (gym-aloha's 0..4), and the service that starts the next
# episode (cube pose of seed + episode number, arms at the start pose).
REWARD_TOPIC = '~/reward'
RESET_SERVICE = '~/reset_episode'
CLOCK_TOPIC = '/clock'
DIAGNOSTICS_TOPIC = '/diagnostics'
# The sim reports its statistics on /diagnostics under this name, once per wall second.
DIAGNOSTIC_NAME = 'aloha_sim: statistics'
DIAGNOSTICS_PERIOD = 1.0  # seconds
HARDWARE_ID = 'aloha_sim'
QOS_DEPTH = 10
# Most control periods stepped in one tick to catch up with the wall clock; beyond that the sim
# drops the backlog (it runs slower than real time) and counts a lag event.
# In simulated time: the most periods the stepping thread makes up at once after a slow step.
MAX_CATCH_UP_PERIODS = 5
# Simulated time: wall seconds without a command after which the sim stops waiting for commands
# (the controller is disabled or gone) and runs on freely until commands arrive again.
LOCKSTEP_TIMEOUT = 1.0
# Wall seconds destroy_node waits for each of: the stepping thread, a running tick, freeing the
# scene. Beyond that it gives up on that part (logged), so that shutdown stays bounded.
SHUTDOWN_TIMEOUT = 1.0
# Longest wait of one spin step of main(): how soon a signal is noticed (seconds).
SPIN_PERIOD = 0.1
# Tolerance when comparing simulated durations with whole periods (fraction of a period).
PERIOD_TOLERANCE = 1e-6
NANOSECONDS = 1_000_000_000
# Separators of the mapping parameters ('a=b,c=d').
PAIR_SEPARATOR = ','
KEY_SEPARATOR = '='
MILLISECONDS = 1000.0
# Render times kept for the statistics.
RENDER_WINDOW = 1000

SIM_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec('robot', 'aloha', 'Robot config name or YAML path: topics, joint names and command '
              'interfaces the sim serves.', read_only=True),
    ParamSpec('task', 'transfer_cube', 'gym-aloha scene.', choices=tuple(TASK_SCENES),
              read_only=True),
    ParamSpec('seed', 0, 'Seed of the task object pose.', range=(0, 2 ** 31 - 1), read_only=True),
    ParamSpec('control_rate_hz', 50.0, 'Physics steps per simulated second (the control rate).',
              range=(1.0, 500.0), read_only=True),
    ParamSpec('camera_rate_hz', 10.0, 'Camera images per simulated second (rendering on a CPU '
              'costs about 10 ms per 240 x 320 image).', range=(0.1, 60.0), read_only=True),
    ParamSpec('image_height', 240, 'Rendered image rows (real ALOHA cameras: 480).',
              range=(16, 480), read_only=True),
    ParamSpec('image_width', 320, 'Rendered image columns (real ALOHA cameras: 640).',
              range=(16, 640), read_only=True),
    ParamSpec('high_quality_render', False, 'Shadows and multisampling (much slower on a CPU).',
              read_only=True),
    ParamSpec('camera_map', 'cam_high=top,cam_left_wrist=left_wrist,cam_right_wrist=right_wrist',
              'Robot camera name = scene camera; robot cameras not listed are not published.',
              read_only=True),
    ParamSpec('arm_prefixes', 'left_=left,right_=right', 'Joint-state prefix of the robot '
              'config = scene arm (left or right).', read_only=True),
    ParamSpec('sim_time', False, 'Run on simulated time and publish /clock (when the machine '
              'cannot keep real time); every other node must set use_sim_time to the same '
              'value.', read_only=True),
    ParamSpec('real_time_factor', 1.0, 'sim_time only: simulated seconds per wall second at '
              'most (1: never faster than the wall clock).', range=(0.01, 100.0),
              read_only=True),
    ParamSpec('lockstep_lead', 0.02, 'sim_time only: once commands arrive, simulated time runs '
              'at most this far (s) ahead of the last command of each command interface, so '
              "that the controller never falls behind; at least the controller's control "
              'period; 0 disables.', range=(0.0, 10.0), read_only=True),
)


@dataclass(frozen=True)
class SimNodeConfig:
    """Parameters of the sim node, read once at start-up."""

    # Robot config name or path.
    robot: str
    # The simulation itself.
    sim: AlohaSimConfig
    # Camera images per simulated second.
    camera_rate_hz: float
    # Robot camera name -> scene camera name.
    camera_map: dict[str, str]
    # Joint-state prefix of the robot config -> scene arm side.
    arm_prefixes: dict[str, str]
    # Simulated time with /clock instead of wall-clock pacing.
    sim_time: bool
    # Pace of the simulated time (sim_time only).
    real_time_factor: float
    # Simulated seconds the sim may run ahead of the last command (sim_time only; 0: no lockstep).
    lockstep_lead: float = 0.0

    @property
    def lockstep_periods(self) -> int:
        """Return the control periods the sim may run ahead of the last command (0: no limit)."""
        if not self.sim_time or self.lockstep_lead <= 0.0:
            return 0
        return max(1, int(self.lockstep_lead / self.sim.control_period + PERIOD_TOLERANCE))


def parse_mapping(text: str, name: str) -> dict[str, str]:
    """
    Parse a mapping parameter of the form ``'a=b,c=d'``.

    Raises:
        ValueError: An entry is not ``key=value`` or a key repeats.

    """
    mapping: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(PAIR_SEPARATOR))):
        key, sep, value = (part.strip() for part in entry.partition(KEY_SEPARATOR))
        if not sep or not key or not value or key in mapping:
            raise ValueError(f"Parameter '{name}' with the value {text!r} must be comma-separated "
                             f"'key=value' pairs with unique keys; '{entry}' is not.")
        mapping[key] = value
    return mapping


@dataclass(frozen=True)
class _Route:
    """Where each value of one command interface goes in the sim."""

    spec: CommandSpec
    # (side, joint) per value, in spec.names order.
    joints: tuple[tuple[str, str], ...]
    # Message joint name -> index in spec.names (JointTrajectory).
    index: dict[str, int]


def config_from_values(values: Mapping[str, Any]) -> tuple[SimNodeConfig, RobotConfig]:
    """
    Build the sim node's configuration from parameter values (missing ones take their defaults).

    Args:
        values: Parameter name -> value, e.g. the ``aloha_sim`` section of a params file.

    Returns:
        The configuration and the robot config it names.

    Raises:
        ValueError: A name is unknown, a mapping is malformed or names a camera that the robot
            config does not have.

    """
    defaults = {spec.name: spec.default for spec in SIM_PARAMETERS}
    unknown = sorted(set(values) - set(defaults) - {'use_sim_time'})
    if unknown:
        raise ValueError(f'Unknown {NODE_NAME} parameters {unknown}; expected names from '
                         f'{sorted(defaults)}.')
    v = {**defaults, **values}
    robot = load_robot_config(v['robot'])
    camera_map = parse_mapping(v['camera_map'], 'camera_map')
    unknown = sorted(set(camera_map) - {cam.name for cam in robot.cameras})
    if unknown:
        raise ValueError(f"Parameter 'camera_map' names cameras {unknown} that are not in "
                         f'{robot.source}; expected some of '
                         f'{[cam.name for cam in robot.cameras]}.')
    prefixes = parse_mapping(v['arm_prefixes'], 'arm_prefixes')
    return SimNodeConfig(
        robot=v['robot'],
        sim=AlohaSimConfig(task=v['task'], control_period=1.0 / float(v['control_rate_hz']),
                           image_height=int(v['image_height']),
                           image_width=int(v['image_width']),
                           high_quality_render=bool(v['high_quality_render']),
                           seed=int(v['seed'])),
        camera_rate_hz=float(v['camera_rate_hz']), camera_map=camera_map,
        arm_prefixes=prefixes, sim_time=bool(v['sim_time']),
        real_time_factor=float(v['real_time_factor']),
        lockstep_lead=float(v['lockstep_lead'])), robot


def build_routes(robot: RobotConfig, arm_prefixes: dict[str, str]) -> tuple[_Route, ...]:
    """
    Map every position command interface of ``robot`` to sim joints.

    Raises:
        ValueError: An arm side is unknown, a command is a base velocity, or a name has no
            configured prefix.

    """
    bad = sorted(set(arm_prefixes.values()) - set(SIDES))
    if bad:
        raise ValueError(f"Parameter 'arm_prefixes' maps to {bad}; expected sides {list(SIDES)}.")
    routes = []
    for spec in robot.commands:
        if spec.type not in (CommandType.JOINT_TRAJECTORY, CommandType.FORWARD_POSITION):
            raise ValueError(f'Command {spec.topic!r} is {spec.type.value}; the ALOHA sim has no '
                             'base. Use a fixed two-arm robot config.')
        joints = []
        for name in spec.names:
            prefix = next((p for p in arm_prefixes if name.startswith(p)), None)
            if prefix is None:
                raise ValueError(f'Command joint {name!r} of {robot.source} starts with none of '
                                 f"the prefixes {list(arm_prefixes)}; set 'arm_prefixes'.")
            joints.append((arm_prefixes[prefix], name[len(prefix):]))
        message_names = spec.joint_names or spec.names
        routes.append(_Route(spec, tuple(joints), {n: i for i, n in enumerate(message_names)}))
    return tuple(routes)


class AlohaSimNode(Node):
    """Step the simulated ALOHA at the control rate and serve it over the real ALOHA topics."""

    def __init__(self, **kwargs) -> None:
        """Declare parameters, load the scene and create publishers, subscriptions and timer."""
        super().__init__(NODE_NAME, **kwargs)
        for spec in SIM_PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        self._config, self._robot = self._read_config()
        self._routes = build_routes(self._robot, self._config.arm_prefixes)
        self._sim = AlohaSim(self._config.sim)
        self._period = self._config.sim.control_period
        self._period_ns = int(round(self._period * NANOSECONDS))
        self._targets = [TrajectoryTarget(np.array([self._sim.joint_target(s, j)
                                                    for s, j in r.joints])) for r in self._routes]
        self._lock = threading.Lock()  # guards the statistics read from other threads
        self._tick_lock = threading.Lock()  # a step vs destroy_node
        self._target_lock = threading.Lock()  # command callbacks vs the stepping thread
        # Simulated time: a command arrived (notifies the stepping thread), or stop.
        self._command_arrived = threading.Condition(self._lock)
        # Route index -> (step count, wall time) when its last command arrived.
        self._last_command: dict[int, tuple[int, float]] = {}
        self._stats = {'steps': 0, 'lag_events': 0, 'commands': 0, 'rejected': 0, 'frames': 0,
                       'lockstep_waits': 0, 'lockstep_wait_s': 0.0, 'diverged': 0}
        self._render_ms: deque[float] = deque(maxlen=RENDER_WINDOW)
        sides = dict(self._config.arm_prefixes)
        self._state_pubs = [
            (self.create_publisher(JointState, t.topic, QOS_DEPTH), sides[t.prefix])
            for t in self._robot.joint_state_topics if t.prefix in sides]
        topics = {cam.name: cam.topic for cam in self._robot.cameras}
        self._camera_pubs = [(name, scene, self.create_publisher(Image, topics[name], QOS_DEPTH))
                             for name, scene in self._config.camera_map.items()]
        self._clock_pub = (self.create_publisher(ClockMsg, CLOCK_TOPIC, QOS_DEPTH)
                           if self._config.sim_time else None)
        for i, route in enumerate(self._routes):
            msg_type = (JointTrajectory if route.spec.type == CommandType.JOINT_TRAJECTORY
                        else Float64MultiArray)
            self.create_subscription(msg_type, route.spec.topic, self._command_callback(i),
                                     QOS_DEPTH)
        self._steps_per_frame = steps_per_frame(self._period, self._config.camera_rate_hz)
        self._wall = Clock(clock_type=ClockType.STEADY_TIME)
        self._closed = False
        self._stopped_cleanly = False
        self._stop = threading.Event()
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, QOS_DEPTH)
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics,
                                             clock=self._wall)
        self._reward_pub = self.create_publisher(Int32, REWARD_TOPIC, QOS_DEPTH)
        self._episode = {'episode': 0, 'seed': self._config.sim.seed, 'reward': 0,
                         'max_reward': 0, 'episode_steps': 0}
        self.create_service(Trigger, RESET_SERVICE, self._reset_episode)
        # ROS time (ns) of simulated time 0: 0 in simulated time (the sim is the clock).
        self._epoch_ns = 0 if self._config.sim_time else self.get_clock().now().nanoseconds
        if self._clock_pub is not None:
            self._clock_pub.publish(ClockMsg(clock=conversions.to_time(0.0)))
        self._publish_state()
        self._publish_cameras()  # also creates the OpenGL context (slow), before the clock starts
        self._wall_start = self._wall_origin = self._wall_now()
        self._timer: Any = None
        self._thread: threading.Thread | None = None
        if self._config.sim_time:
            self._thread = threading.Thread(target=self._run_sim_time, name='aloha_sim_step',
                                            daemon=True)
            self._thread.start()
        else:
            self._epoch_ns = self.get_clock().now().nanoseconds
            self._timer = self.create_timer(self._period, self._on_tick, clock=self._wall)
        lockstep = (f', lockstep: at most {self._config.lockstep_periods} control period(s) '
                    'ahead of the commands' if self._config.lockstep_periods else '')
        self.get_logger().info(
            f'ALOHA sim ({self._config.sim.task}) at {1.0 / self._period:.0f} Hz, cameras '
            f'{list(self._config.camera_map)} at {self._config.camera_rate_hz:g} Hz, '
            + (f'simulated time on /clock (at most {self._config.real_time_factor:g} x real '
               f'time{lockstep}).' if self._config.sim_time else 'real time.'))

    @property
    def stopped_cleanly(self) -> bool:
        """Return whether destroy_node stopped stepping and freed the scene in time."""
        return self._stopped_cleanly

    def destroy_node(self) -> None:
        """
        Stop stepping, free the scene and join its render thread, then destroy the node.

        Bounded: each wait lasts at most ``SHUTDOWN_TIMEOUT``; a part that does not finish in
        time is logged and left behind (``stopped_cleanly`` is then False).
        """
        self._stop.set()
        with self._command_arrived:
            self._command_arrived.notify_all()
        clean = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(SHUTDOWN_TIMEOUT)
            clean = not self._thread.is_alive()
        # A tick still running on an executor thread (or the stepping thread) finishes first.
        if self._tick_lock.acquire(timeout=SHUTDOWN_TIMEOUT):
            try:
                self._closed = True
                if self._timer is not None:
                    self.destroy_timer(self._timer)
                self.destroy_timer(self._diag_timer)
            finally:
                self._tick_lock.release()
            closer = threading.Thread(target=self._sim.close, name='aloha_sim_close', daemon=True)
            closer.start()
            closer.join(SHUTDOWN_TIMEOUT)
            clean = clean and not closer.is_alive()
        else:
            self._closed = True
            clean = False
        if not clean:
            self.get_logger().error(
                f'The sim did not stop within {SHUTDOWN_TIMEOUT:g} s (stepping or rendering '
                'hangs); leaving it behind so that the process can exit.')
        self._stopped_cleanly = clean
        super().destroy_node()

    def _read_config(self) -> tuple[SimNodeConfig, RobotConfig]:
        """Read the declared parameters once; return them and the robot config they name."""
        return config_from_values({spec.name: self.get_parameter(spec.name).value
                                   for spec in SIM_PARAMETERS})

    @property
    def config(self) -> SimNodeConfig:
        """Return the configuration read at start-up."""
        return self._config

    @property
    def sim(self) -> AlohaSim:
        """Return the simulation (read it only while the node is not spinning)."""
        return self._sim

    def stats(self) -> dict[str, float]:
        """Return counters: steps, lag events, commands, lockstep waits, frames, render ms."""
        with self._lock:
            out: dict[str, float] = dict(self._stats)
            out.update(self._episode)
            render = np.array(self._render_ms) if self._render_ms else np.zeros(1)
        wall = max(self._wall_now() - self._wall_origin, 1e-9)
        out['sim_time'] = out['steps'] * self._period
        out['wall_time'] = wall
        out['step_rate_hz'] = out['steps'] / wall
        out['real_time_factor'] = out['sim_time'] / wall
        out['render_ms_mean'] = float(render.mean())
        out['render_ms_p99'] = float(np.percentile(render, 99))
        return out

    def now(self) -> float:
        """Return the ROS time (s) of the current simulation state."""
        return self._now_ns() / NANOSECONDS

    def _now_ns(self) -> int:
        """Return the ROS time (ns) of the current state: whole control periods since the epoch."""
        return self._epoch_ns + self._stats['steps'] * self._period_ns

    def _wall_now(self) -> float:
        return self._wall.now().nanoseconds * 1e-9

    def _command_callback(self, i: int) -> Callable[[JointTrajectory | Float64MultiArray], None]:
        """Return the subscription callback of route ``i``."""
        def callback(msg: JointTrajectory | Float64MultiArray) -> None:
            try:
                with self._target_lock:
                    self._accept(i, msg)
            except ValueError as error:
                with self._lock:
                    self._stats['rejected'] += 1
                self.get_logger().warn(f'Rejected command on {self._routes[i].spec.topic}: '
                                       f'{error}', throttle_duration_sec=1.0)
                return
            with self._command_arrived:
                self._stats['commands'] += 1
                self._last_command[i] = (self._stats['steps'], self._wall_now())
                self._command_arrived.notify_all()
        return callback

    def _accept(self, i: int, msg: JointTrajectory | Float64MultiArray) -> None:
        """Turn one command message into the new trajectory of route ``i``."""
        route, now = self._routes[i], self.now()
        size = len(route.joints)
        if isinstance(msg, Float64MultiArray):
            if len(msg.data) != size:
                raise ValueError(f'{len(msg.data)} values; expected {size} for '
                                 f'{list(route.spec.names)}')
            self._targets[i].replace(now, np.zeros(1), np.array([msg.data]), now=now)
            return
        if sorted(msg.joint_names) != sorted(route.index):
            raise ValueError(f'joint_names {list(msg.joint_names)}; expected {list(route.index)}')
        order = [route.index[name] for name in msg.joint_names]
        times = np.array([conversions.to_seconds(p.time_from_start) for p in msg.points])
        positions = np.zeros((len(msg.points), size))
        for k, point in enumerate(msg.points):
            if len(point.positions) != size:
                raise ValueError(f'point {k} has {len(point.positions)} positions; expected '
                                 f'{size}')
            positions[k, order] = point.positions
        stamp = conversions.to_seconds(msg.header.stamp)
        self._targets[i].replace(stamp if stamp > 0.0 else now, times, positions, now=now)

    def _on_tick(self) -> None:
        """Step the physics to catch up with the wall clock (real time), then publish."""
        with self._tick_lock:
            if self._closed:
                return
            due = int((self._wall_now() - self._wall_start) / self._period) - self._stats['steps']
            if due < 1:
                return
            if due > MAX_CATCH_UP_PERIODS:
                # Drop the backlog: the simulated world pauses for the dropped periods, and the
                # stamps jump with the wall clock so that they stay on ROS time.
                dropped = due - MAX_CATCH_UP_PERIODS
                self._wall_start += dropped * self._period
                self._epoch_ns += dropped * self._period_ns
                with self._lock:
                    self._stats['lag_events'] += 1
                due = MAX_CATCH_UP_PERIODS
            self._step_and_publish(due)

    def _lockstep_allows(self) -> bool:
        """Return whether one more step keeps within the lead over every active command route."""
        lead = self._config.lockstep_periods
        now = self._wall_now()
        active = [step for step, wall in self._last_command.values()
                  if now - wall < LOCKSTEP_TIMEOUT]
        return not lead or not active or self._stats['steps'] + 1 - min(active) <= lead

    def _wait_for_commands(self) -> bool:
        """Wait until lockstep allows one more step (sim time); return False when stopping."""
        with self._command_arrived:
            if self._lockstep_allows():
                return not self._stop.is_set()
            start = self._wall_now()
            self._stats['lockstep_waits'] += 1
            while not self._stop.is_set() and not self._lockstep_allows():
                self._command_arrived.wait(LOCKSTEP_TIMEOUT)
            self._stats['lockstep_wait_s'] += self._wall_now() - start
        return not self._stop.is_set()

    def _run_sim_time(self) -> None:
        """Step as fast as pacing and lockstep allow (sim time) until destroy_node."""
        tick = self._period / self._config.real_time_factor
        next_wall = self._wall_now()
        while not self._stop.is_set():
            if self._stop.wait(max(0.0, next_wall - self._wall_now())):
                return
            if not self._wait_for_commands():
                return
            with self._tick_lock:
                if self._closed:
                    return
                try:
                    self._step_and_publish(1)
                except Exception:  # noqa: B902 - a shutdown context fails publishing: stop
                    if self._stop.is_set() or not self.context.ok():
                        return
                    raise
            next_wall = max(next_wall + tick, self._wall_now() - MAX_CATCH_UP_PERIODS * tick)

    def _step_and_publish(self, periods: int) -> None:
        """Step ``periods`` control periods following the commanded trajectories, then publish."""
        frame_due = False
        for _ in range(periods):
            now = self.now()
            with self._target_lock:
                samples = [target.sample(now) for target in self._targets]
            for route, sample in zip(self._routes, samples):
                for (side, joint), value in zip(route.joints, sample):
                    self._sim.set_joint_target(side, joint, value)
            try:
                self._sim.step()
            except SimulationDiverged as error:
                # Wild commands made MuJoCo's state invalid: a new episode from the start pose
                # (the commands of the failed one are dropped), never a dead sim.
                self.get_logger().error(f'{error} Starting {self._next_episode()}.')
                with self._lock:
                    self._stats['diverged'] += 1
                continue
            reward = self._sim.reward()
            self._reward_pub.publish(Int32(data=reward))
            with self._lock:
                self._stats['steps'] += 1
                self._episode['reward'] = reward
                self._episode['max_reward'] = max(self._episode['max_reward'], reward)
                self._episode['episode_steps'] += 1
                frame_due |= self._stats['steps'] % self._steps_per_frame == 0
            if self._clock_pub is not None:
                self._clock_pub.publish(ClockMsg(clock=conversions.to_time(self.now())))
        self._publish_state()
        if frame_due:
            self._publish_cameras()

    def _reset_episode(self, request: Trigger.Request, response: Trigger.Response
                       ) -> Trigger.Response:
        """Start the next episode (service ``reset_episode``)."""
        with self._tick_lock:
            response.success, response.message = True, self._next_episode()
            # The new episode's first observation at once: a policy enabled right after the
            # reset must not infer from the last episode's final joint states and images (with
            # lockstep the sim does not step again until commands arrive).
            self._publish_state()
            self._publish_cameras()
        return response

    def _next_episode(self) -> str:
        """
        Start the next episode: the next seed's cube pose, arms and targets at the start.

        The caller holds ``_tick_lock`` (no step runs meanwhile). Returns 'episode N, seed S'.
        """
        with self._target_lock:
            episode = self._episode['episode'] + 1
            seed = self._config.sim.seed + episode
            self._sim.reset(seed)
            self._targets = [TrajectoryTarget(np.array([self._sim.joint_target(s, j)
                                                        for s, j in r.joints]))
                             for r in self._routes]
            with self._lock:
                self._episode = {'episode': episode, 'seed': seed, 'reward': 0,
                                 'max_reward': 0, 'episode_steps': 0}
        return f'episode {episode}, seed {seed}'

    def _publish_state(self) -> None:
        """Publish each arm's JointState stamped with the simulation's time."""
        header = Header(stamp=conversions.to_time(self.now()))
        for publisher, side in self._state_pubs:
            state = self._sim.joint_state(side)
            msg = JointState(header=header, name=list(state.names))
            msg.position = state.positions.tolist()
            msg.velocity = state.velocities.tolist()
            publisher.publish(msg)

    def _publish_cameras(self) -> None:
        """Render and publish every mapped camera."""
        stamp = conversions.to_time(self.now())
        for name, scene, publisher in self._camera_pubs:
            start = time.perf_counter()
            rgb = self._sim.render(scene)  # (H, W, 3)
            with self._lock:
                self._render_ms.append((time.perf_counter() - start) * MILLISECONDS)
                self._stats['frames'] += 1
            publisher.publish(conversions.rgb_to_image(rgb, stamp=stamp, frame_id=name))

    def _publish_diagnostics(self) -> None:
        """Publish the statistics of ``stats()`` as one DiagnosticStatus."""
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name=DIAGNOSTIC_NAME,
                                  message='running', hardware_id=HARDWARE_ID)
        status.values = [KeyValue(key=key, value=f'{value:.6g}')
                         for key, value in self.stats().items()]
        msg = DiagnosticArray(header=Header(stamp=conversions.to_time(self.now())))
        msg.status = [status]
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    """Run the sim node until Ctrl-C / SIGTERM; the shutdown takes a few seconds at most."""
    # Own signal handling: the first SIGINT/SIGTERM stops spinning; more of them (launch and a
    # terminal each send one, people press Ctrl-C again) must not cut the bounded clean-up short.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    exit_with_parent_if_asked(args)  # launch files pass --exit-with-parent: never an orphan
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    node = None
    clean = True
    try:
        node = AlohaSimNode()
        while rclpy.ok() and not stopping.is_set():
            rclpy.spin_once(node, timeout_sec=SPIN_PERIOD)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stopping.set()
        if node is not None:
            node.destroy_node()
            clean = node.stopped_cleanly
        rclpy.try_shutdown()
        # Stopped: later signals (rclpy's shutdown may restore the default action) are moot.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    if not clean:
        # A hung render thread would keep the interpreter from exiting: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


if __name__ == '__main__':
    main()
