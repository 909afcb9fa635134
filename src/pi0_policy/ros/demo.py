"""
Run the simulated bimanual ALOHA driven by the pi0 node for a bounded time and report on it.

``pi0_sim_demo --duration S --output-dir DIR [--checkpoint PATH] [--prompt TEXT] [--time MODE]
[--strategy NAME]`` starts the sim node (``aloha_sim``) and the pi0 node with the bimanual ALOHA
config (the tiny random model when no checkpoint is given, so the arms move meaninglessly) as two
processes -- each has its own GIL, which a 2-core machine needs -- with the parameters of
``config/sim_bimanual.yaml``. A recorder node in this process listens on the topics a real robot
would. The demo waits until the pi0 node
is active (autostart), enables it through ``~/enable``, runs for the duration, stops both
processes with SIGINT, prints a summary and writes to the output folder ``summary.json``,
``joints.png`` (commanded vs measured joints over time), ``top_camera.mp4`` (or ``.gif``), the
parameters used (``params.yaml``) and one log per node; :mod:`pi0_policy.sim.report` writes the
plot, video and summary.

Clock (``--time auto|real|sim``, default auto): before starting the nodes the demo measures what
the sim costs per control period on this machine (``calibrate``: physics step plus the camera
frames amortised over their rate, with the sim's own settings, for about a second) and runs in
real time when that is at most ``REAL_TIME_MAX_LOAD`` of the period -- the rest is left to the
pi0 node, ROS message transport and the recorder, which share the CPU -- and otherwise on
simulated time: the sim publishes ``/clock`` and steps in lockstep with the pi0 node's commands
(see :mod:`pi0_policy.ros.sim_node`), and the pi0 node gets ``use_sim_time``. A full checkpoint on
the CPU always runs on simulated time (its inference takes seconds and loads every core).

Chunk strategy (``--strategy``, default auto): ``async`` for the tiny model or an accelerator;
``sync`` for a checkpoint on the CPU, whose seconds-long inference would leave async only stale
actions: the robot holds while the model infers, executes ``execute_steps`` actions, repeats.
"""

import argparse
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from embodiment_adapters import load_robot_config, make_adapter
from embodiment_adapters.config import CommandSpec, CommandType
from lifecycle_msgs.srv import GetState
import numpy as np
from pi0_msgs.msg import ActionChunk, PolicyStatus
from pi0_policy.ros import conversions
from pi0_policy.ros.sim_node import config_from_values as sim_config_from_values
from pi0_policy.ros.sim_node import DIAGNOSTIC_NAME, NODE_NAME as SIM_NODE_NAME
from pi0_policy.runtime.chunking import available_strategies
from pi0_policy.sim import report
from pi0_policy.sim.aloha import (AlohaSim, CALIBRATION_SECONDS, measure_cost, SimCost,
                                  steps_per_frame)
# Re-exported: the report writers and their file names lived here before pi0_policy.sim.report.
from pi0_policy.sim.report import (  # noqa: F401
    DemoResult, LIMIT_TOLERANCE, limit_violations, PLOT_FILE, SUMMARY_FILE, VIDEO_FORMATS,
    VIDEO_STEM, write_plot, write_video)
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory
import yaml

# Node name of pi0_policy.ros.policy_node (not imported here: it would load torch into the demo).
POLICY_NODE_NAME = 'pi0_policy_node'
POLICY_MODULE = 'pi0_policy.ros.policy_node'
SIM_MODULE = 'pi0_policy.ros.sim_node'
DEFAULT_ROBOT = 'aloha'

DEFAULT_DURATION = 20.0  # seconds
DEFAULT_OUTPUT_DIR = 'out/sim_demo'
DEFAULT_PROMPT = 'transfer the cube to the other arm'
PARAMS_FILE = 'sim_bimanual.yaml'
PARAMS_OUT_FILE = 'params.yaml'
DEFAULT_STARTUP_TIMEOUT = 180.0  # seconds; loading a full pi0 checkpoint takes a while
PACKAGE = 'pi0_policy'
RECORDER_NODE_NAME = 'pi0_sim_demo_recorder'
ROS_PARAMETERS_KEY = 'ros__parameters'
# Seconds to wait for a service answer, for a process to stop, between liveness checks.
SERVICE_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL_PERIOD = 0.5
LOG_TAIL_LINES = 30
# Exit codes of a node stopped by SIGINT: rclpy's clean shutdown, or Python's default handler.
CLEAN_EXIT_CODES = (0, -signal.SIGINT)
# Camera frames kept for the video (10 Hz x 60 s).
MAX_FRAMES = 600
ACTIVE_LABEL = 'active'
# Clock modes of --time: measure and choose, real time, simulated time (/clock).
TIME_AUTO, TIME_REAL, TIME_SIM = 'auto', 'real', 'sim'
TIME_MODES = (TIME_AUTO, TIME_REAL, TIME_SIM)
# --strategy auto picks one of these; the others are the chunk executors' names.
STRATEGY_AUTO = 'auto'
STRATEGY_CPU_CHECKPOINT = 'sync'
STRATEGY_DEFAULT = 'async'
STRATEGIES = (STRATEGY_AUTO,) + tuple(available_strategies())
CPU_DEVICE = 'cpu'
# Real time only when the sim needs at most this fraction of each control period (measured
# physics + rendering + message encoding). The rest of the period is for what the calibration
# does not measure but shares the CPU with the sim: the pi0 node's control loop and inference,
# DDS transport of the images, the recorder. Above it, simulated time.
REAL_TIME_MAX_LOAD = 0.5
MS = 1000.0


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run does."""

    # Seconds the nodes run once the pi0 node is active (model loading comes before).
    duration: float = DEFAULT_DURATION
    # Folder of summary.json, joints.png and the video (created if missing).
    output_dir: pathlib.Path = pathlib.Path(DEFAULT_OUTPUT_DIR)
    # pi0 checkpoint folder; empty uses the tiny random model.
    checkpoint: str = ''
    # Instruction the policy is conditioned on.
    prompt: str = DEFAULT_PROMPT
    # Torch device of the policy.
    device: str = 'cpu'
    # Clock: 'auto' (measure the sim and choose), 'real' or 'sim' (simulated time, /clock).
    time_mode: str = TIME_AUTO
    # Chunk execution strategy of the pi0 node, or 'auto' (see choose_strategy).
    strategy: str = STRATEGY_AUTO
    # Video container: 'mp4' (small; needs ffmpeg from imageio-ffmpeg) or 'gif'.
    video_format: str = 'mp4'
    # Seconds the pi0 node may take to load and become active.
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    # Extra pi0_policy_node parameters (name -> value), e.g. {'action_mode': 'absolute'}.
    policy_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate the fields."""
        if not self.duration > 0.0:
            raise ValueError(f'duration ({self.duration}) must be > 0 seconds.')
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f'video_format {self.video_format!r} must be one of '
                             f'{list(VIDEO_FORMATS)}.')
        if self.time_mode not in TIME_MODES:
            raise ValueError(f'time_mode {self.time_mode!r} must be one of {list(TIME_MODES)}.')
        if self.strategy not in STRATEGIES:
            raise ValueError(f'strategy {self.strategy!r} must be one of {list(STRATEGIES)}.')


@dataclass(frozen=True)
class ClockChoice:
    """Which clock the nodes run on, and why."""

    # True: simulated time (/clock, use_sim_time); False: real time.
    sim_time: bool
    # One sentence for the printout and the summary.
    reason: str

    @property
    def label(self) -> str:
        """Return 'simulated (/clock)' or 'real time'."""
        return 'simulated (/clock)' if self.sim_time else 'real time'


@dataclass(frozen=True)
class RunPlan:
    """What the demo decided before starting the nodes."""

    clock: ClockChoice
    # Chunk strategy of the pi0 node and why.
    strategy: str
    strategy_reason: str
    # The sim's measured cost (None when the clock was not measured).
    cost: SimCost | None = None


def is_cpu_checkpoint(checkpoint: str, device: str) -> bool:
    """Return whether a real checkpoint (full pi0: seconds per inference) runs on the CPU."""
    return bool(checkpoint) and device.split(':')[0] == CPU_DEVICE


def choose_clock(requested: str, cost: SimCost | None, *, cpu_checkpoint: bool = False,
                 max_load: float = REAL_TIME_MAX_LOAD) -> ClockChoice:
    """
    Choose real or simulated time for the sim and the pi0 node.

    Args:
        requested: 'real' or 'sim' (taken as given), or 'auto'.
        cost: The sim's measured cost per control period (needed by 'auto' unless
            ``cpu_checkpoint``).
        cpu_checkpoint: A full checkpoint infers on the CPU ('auto' then picks simulated time).
        max_load: 'auto' picks real time when ``cost.load`` is at most this.

    Returns:
        The choice and its reason.

    Raises:
        ValueError: ``requested`` is not a time mode, or 'auto' has no cost to decide on.

    """
    if requested not in TIME_MODES:
        raise ValueError(f'Time mode {requested!r} is not one of {list(TIME_MODES)}.')
    if requested != TIME_AUTO:
        return ClockChoice(requested == TIME_SIM, f'requested with --time {requested}')
    if cpu_checkpoint:
        return ClockChoice(True, 'a full pi0 checkpoint on the CPU takes seconds per inference '
                           'and loads every core, so the sim runs in lockstep with the pi0 node')
    if cost is None:
        raise ValueError("Time mode 'auto' needs the measured sim cost; calibrate first or pass "
                         '--time real or --time sim.')
    measured = (f'the sim needs {cost.per_period_s * MS:.1f} ms per {cost.period * MS:.0f} ms '
                f'control period ({cost.load:.0%}; step {cost.step_s * MS:.2f} ms, cameras '
                f'{cost.frame_s * MS:.1f} ms every {cost.steps_per_frame} periods)')
    if cost.load <= max_load:
        return ClockChoice(False, f'{measured}, within the {max_load:.0%} that leaves the rest '
                           'for the pi0 node and ROS')
    return ClockChoice(True, f'{measured}, more than the {max_load:.0%} that real time '
                       'allows next to the pi0 node and ROS')


def choose_strategy(requested: str, checkpoint: str, device: str) -> tuple[str, str]:
    """
    Choose the pi0 node's chunk strategy.

    Args:
        requested: A strategy name (taken as given) or 'auto'.
        checkpoint: Checkpoint folder ('' for the tiny random model).
        device: Torch device of the policy.

    Returns:
        The strategy and the reason for it.

    Raises:
        ValueError: ``requested`` is neither 'auto' nor a strategy.

    """
    if requested not in STRATEGIES:
        raise ValueError(f'Strategy {requested!r} is not one of {list(STRATEGIES)}.')
    if requested != STRATEGY_AUTO:
        return requested, f'requested with --strategy {requested}'
    if is_cpu_checkpoint(checkpoint, device):
        return STRATEGY_CPU_CHECKPOINT, ('a full checkpoint on the CPU infers for seconds: the '
                                         'robot holds while it infers, then executes the chunk')
    return STRATEGY_DEFAULT, ('the model infers within a chunk: the next chunk is computed '
                              'while the current one executes')


def calibrate(sim_values: dict[str, Any], seconds: float = CALIBRATION_SECONDS) -> SimCost:
    """
    Measure the sim's cost per control period with the sim node's own settings.

    Args:
        sim_values: The sim node's parameters (the ``aloha_sim`` section of the params file).
        seconds: Wall seconds to measure for.

    Returns:
        Step and camera-frame costs (frames include the ROS image message encoding).

    """
    config, _ = sim_config_from_values(sim_values)
    sim = AlohaSim(config.sim)
    try:
        return measure_cost(
            sim, list(config.camera_map.values()),
            steps_per_frame(config.sim.control_period, config.camera_rate_hz),
            seconds=seconds, encode=conversions.rgb_to_image)
    finally:
        sim.close()


def plan_run(options: DemoOptions, params: dict[str, Any],
             log: Callable[[str], None] = print) -> RunPlan:
    """
    Choose the chunk strategy and the clock (calibrating the sim when needed) and print them.

    Args:
        options: The demo options.
        params: The node parameters, keyed by node name (``sim_bimanual.yaml``).
        log: Where the choices are printed.

    Returns:
        The plan.

    """
    strategy, strategy_reason = choose_strategy(options.strategy, options.checkpoint,
                                                options.device)
    cpu_checkpoint = is_cpu_checkpoint(options.checkpoint, options.device)
    cost = None
    if options.time_mode == TIME_AUTO and not cpu_checkpoint:
        log('pi0_sim_demo: measuring the sim on this machine (about '
            f'{CALIBRATION_SECONDS:g} s) to choose real or simulated time')
        cost = calibrate(params.get(SIM_NODE_NAME, {}).get(ROS_PARAMETERS_KEY, {}))
    clock = choose_clock(options.time_mode, cost, cpu_checkpoint=cpu_checkpoint)
    log(f'pi0_sim_demo: clock: {clock.label}, because {clock.reason}')
    log(f'pi0_sim_demo: chunk strategy: {strategy}, because {strategy_reason}')
    return RunPlan(clock, strategy, strategy_reason, cost)


def find_params_file(name: str = PARAMS_FILE) -> pathlib.Path:
    """
    Return ``config/<name>`` from the source tree or the installed package share.

    Raises:
        FileNotFoundError: Neither holds the file.

    """
    candidates = [pathlib.Path(__file__).resolve().parents[3] / 'config' / name]
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidates.append(pathlib.Path(prefix) / 'share' / PACKAGE / 'config' / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f'{name} not found in {[str(p) for p in candidates]}; run from the '
                            'repository or source install/setup.bash after colcon build.')


class DemoRecorder(Node):
    """Record commands, joint states, the top camera and the pi0 node's status and chunks."""

    def __init__(self, adapter: Any, top_topic: str, **kwargs: Any) -> None:
        """Subscribe to the robot's command, joint-state and top camera topics."""
        super().__init__(RECORDER_NODE_NAME, **kwargs)
        self._adapter, self._start = adapter, time.monotonic()
        self._lock = threading.Lock()
        self.commands: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.measured: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.messages: dict[str, int] = defaultdict(int)
        self.frames: list[np.ndarray] = []
        self.latencies: list[float] = []
        self.status: PolicyStatus | None = None
        self.states_seen: dict[str, int] = defaultdict(int)
        # The sim's last diagnostics values, and those when the clock was restarted.
        self.sim_stats: dict[str, float] = {}
        self.sim_stats_at_start: dict[str, float] = {}
        self._recording = True
        for spec in adapter.commands:
            msg_type = (JointTrajectory if spec.type == CommandType.JOINT_TRAJECTORY
                        else Float64MultiArray)
            self.create_subscription(msg_type, spec.topic, self._command_callback(spec), 10)
        for topic in adapter.joint_state_topics:
            self.create_subscription(
                JointState, topic.topic,
                lambda msg, prefix=topic.prefix: self._on_joint_state(prefix, msg), 10)
        self.create_subscription(Image, top_topic, self._on_image, 10)
        self.create_subscription(PolicyStatus, f'/{POLICY_NODE_NAME}/status', self._on_status, 10)
        self.create_subscription(ActionChunk, f'/{POLICY_NODE_NAME}/action_chunk',
                                 self._on_chunk, 10)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.get_state = self.create_client(GetState, f'/{POLICY_NODE_NAME}/get_state')
        self.enable = self.create_client(SetBool, f'/{POLICY_NODE_NAME}/enable')

    def elapsed(self) -> float:
        """Return seconds since the recorder started (or restarted its clock)."""
        return time.monotonic() - self._start

    def restart_clock(self) -> None:
        """Drop what was recorded so far and count time from now."""
        with self._lock:
            self._start = time.monotonic()
            for records in (self.commands, self.measured, self.messages, self.states_seen):
                records.clear()
            self.frames.clear()
            self.latencies.clear()
            self.sim_stats_at_start = dict(self.sim_stats)

    def stop_recording(self) -> float:
        """Ignore further messages; return the seconds recorded."""
        with self._lock:
            self._recording = False
            return self.elapsed()

    def _command_callback(self, spec: CommandSpec) -> Callable[[Any], None]:
        message_names = spec.joint_names or spec.names
        to_action = dict(zip(message_names, spec.names))

        def callback(msg: JointTrajectory | Float64MultiArray) -> None:
            now = self.elapsed()
            if not self._recording:
                return
            if isinstance(msg, Float64MultiArray):
                rows = [(spec.names, msg.data)]
            else:
                names = [to_action.get(name, name) for name in msg.joint_names]
                rows = [(names, point.positions) for point in msg.points]
            with self._lock:
                self.messages[spec.topic] += 1
                for names, values in rows:
                    for name, value in zip(names, values):
                        self.commands[name].append((now, float(value)))
        return callback

    def _on_joint_state(self, prefix: str, msg: JointState) -> None:
        now = self.elapsed()
        with self._lock:
            if not self._recording:
                return
            for name, value in zip(msg.name, msg.position):
                self.measured[prefix + name].append((now, float(value)))

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            if self._recording and len(self.frames) < MAX_FRAMES:
                self.frames.append(conversions.image_to_rgb(msg, use_cv_bridge=False))

    def _on_status(self, msg: PolicyStatus) -> None:
        with self._lock:
            if not self._recording:
                return
            self.status = msg
            self.states_seen[msg.state_name.split(':')[0]] += 1

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self._lock:
            if self._recording:
                self.latencies.append(float(msg.inference_latency))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == DIAGNOSTIC_NAME and self._recording:
                with self._lock:
                    self.sim_stats = {kv.key: float(kv.value) for kv in status.values}


def call_service(client: Any, request: Any, what: str) -> Any:
    """
    Call a service of the pi0 node while another thread spins, and return the response.

    Raises:
        RuntimeError: The service did not appear or answer within ``SERVICE_TIMEOUT``.

    """
    if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT):
        raise RuntimeError(f'{what}: service {client.srv_name} did not appear within '
                           f'{SERVICE_TIMEOUT} s; is the pi0 node running?')
    event = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: event.set())
    if not event.wait(SERVICE_TIMEOUT) or future.result() is None:
        raise RuntimeError(f'{what}: {client.srv_name} did not answer within {SERVICE_TIMEOUT} s.')
    return future.result()


def _package_root() -> pathlib.Path:
    """Return the folder that holds the pi0_policy and embodiment_adapters packages."""
    return pathlib.Path(__file__).resolve().parents[2]


def load_params() -> dict[str, Any]:
    """Return the node parameters of ``sim_bimanual.yaml``, keyed by node name."""
    params = yaml.safe_load(find_params_file().read_text())
    for node in (POLICY_NODE_NAME, SIM_NODE_NAME):
        params.setdefault(node, {}).setdefault(ROS_PARAMETERS_KEY, {})
    return params


def write_params(options: DemoOptions, path: pathlib.Path, *, sim_time: bool,
                 strategy: str) -> dict[str, Any]:
    """
    Write the node parameters of this run (``sim_bimanual.yaml`` plus options) to ``path``.

    Args:
        options: Checkpoint, prompt and device of the pi0 node.
        path: File to write.
        sim_time: Simulated time: ``sim_time`` of the sim and ``use_sim_time`` of the pi0 node.
        strategy: Chunk strategy of the pi0 node (not 'auto').

    Returns:
        The parameters, keyed by node name.

    Raises:
        ValueError: ``strategy`` is not a chunk strategy.

    """
    if strategy not in STRATEGIES[1:]:
        raise ValueError(f'strategy {strategy!r} must be one of {list(STRATEGIES[1:])}; '
                         'resolve auto with choose_strategy first.')
    params = load_params()
    policy = params[POLICY_NODE_NAME][ROS_PARAMETERS_KEY]
    policy.update(checkpoint=options.checkpoint, prompt=options.prompt, device=options.device,
                  strategy=strategy, use_sim_time=sim_time)
    # Checkpoint-specific settings of the pi0 node, passed through as given (validated there).
    policy.update(options.policy_params)
    params[SIM_NODE_NAME][ROS_PARAMETERS_KEY]['sim_time'] = sim_time
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def start_node(module: str, params_file: pathlib.Path, log_path: pathlib.Path
               ) -> subprocess.Popen:
    """Start ``module.main()`` in a new Python process with the given parameters file."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(_package_root()),
                                                      env.get('PYTHONPATH', '')]))
    # A shell started in the background ignores SIGINT and children inherit that: the child
    # restores Python's handler first, so that SIGINT runs the node's clean shutdown. (Not a
    # preexec_fn: running Python between fork and exec can deadlock a threaded parent.)
    code = ('import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
            f'from {module} import main; sys.exit(main())')
    with open(log_path, 'w') as log_file:
        return subprocess.Popen(
            [sys.executable, '-c', code, '--ros-args', '--params-file', str(params_file)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)


def stop_node(process: subprocess.Popen) -> int:
    """Stop a node process with SIGINT (then SIGTERM, then SIGKILL) and return its exit code."""
    for stop in (lambda: process.send_signal(signal.SIGINT), process.terminate, process.kill):
        if process.poll() is not None:
            break
        stop()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def _log_tail(path: pathlib.Path) -> str:
    lines = path.read_text(errors='replace').splitlines()
    return '\n'.join(lines[-LOG_TAIL_LINES:])


def _check_alive(processes: dict[str, tuple[subprocess.Popen, pathlib.Path]]) -> None:
    """Raise RuntimeError with the log tail of the first node process that exited."""
    for name, (process, log_path) in processes.items():
        if process.poll() is not None:
            raise RuntimeError(f'{name} exited with code {process.returncode}; the end of '
                               f'{log_path}:\n{_log_tail(log_path)}')


def _wait_active(recorder: 'DemoRecorder', processes: dict, timeout: float) -> None:
    """Wait until the pi0 node answers get_state as active, then enable it."""
    deadline = time.monotonic() + timeout
    while not recorder.get_state.wait_for_service(timeout_sec=POLL_PERIOD):
        _check_alive(processes)
        if time.monotonic() > deadline:
            raise RuntimeError(f'The pi0 node did not come up within {timeout:g} s (model '
                               'loading); raise --startup-timeout or see its log.')
    state = call_service(recorder.get_state, GetState.Request(), 'pi0 node state')
    if state.current_state.label != ACTIVE_LABEL:
        log_path = processes[POLICY_NODE_NAME][1]
        raise RuntimeError(f'The pi0 node is {state.current_state.label!r}, not active; the end '
                           f'of {log_path} says why:\n{_log_tail(log_path)}')
    call_service(recorder.enable, SetBool.Request(data=True), 'enable the pi0 node')


def run_demo(options: DemoOptions, *, log: Callable[[str], None] = print) -> DemoResult:
    """
    Run the sim node and the pi0 node as processes for ``options.duration`` seconds and record.

    Returns:
        The summary (also written to ``summary.json``) and the records behind it.

    Raises:
        RuntimeError: A node process exited early, or the pi0 node did not become active.

    """
    out = options.output_dir
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_run(options, load_params(), log)
    params = write_params(options, out / PARAMS_OUT_FILE, sim_time=plan.clock.sim_time,
                          strategy=plan.strategy)
    robot = params[POLICY_NODE_NAME][ROS_PARAMETERS_KEY].get('robot', DEFAULT_ROBOT)
    adapter = make_adapter(load_robot_config(robot))
    top = next(cam for cam in adapter.cameras if cam.model_slot == 0)
    context = rclpy.Context()
    rclpy.init(context=context)
    recorder = DemoRecorder(adapter, top.topic, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(recorder)
    spinner = threading.Thread(target=executor.spin, name='pi0_sim_demo_recorder')
    spinner.start()
    processes: dict[str, tuple[subprocess.Popen, pathlib.Path]] = {}
    try:
        model = options.checkpoint or 'tiny random model'
        log(f'pi0_sim_demo: starting the ALOHA sim and the pi0 node ({model}); logs in {out}')
        for name, module in ((POLICY_NODE_NAME, POLICY_MODULE), (SIM_NODE_NAME, SIM_MODULE)):
            log_path = out / f'{name}.log'
            processes[name] = (start_node(module, out / PARAMS_OUT_FILE, log_path), log_path)
        _wait_active(recorder, processes, options.startup_timeout)
        log(f'pi0_sim_demo: running for {options.duration:g} s')
        recorder.restart_clock()
        deadline = time.monotonic() + options.duration
        while time.monotonic() < deadline:
            _check_alive(processes)
            time.sleep(min(POLL_PERIOD, max(0.0, deadline - time.monotonic())))
        wall = recorder.stop_recording()
    finally:
        for name in (POLICY_NODE_NAME, SIM_NODE_NAME):  # the pi0 node first: it sends a hold
            if name in processes:
                code = stop_node(processes[name][0])
                if code not in CLEAN_EXIT_CODES:
                    log(f'pi0_sim_demo: {name} exited with code {code}; see '
                        f'{processes[name][1]}')
        executor.shutdown(timeout_sec=STOP_TIMEOUT)
        spinner.join(STOP_TIMEOUT)
        recorder.destroy_node()
        rclpy.try_shutdown(context=context)
    return _report(options, plan, adapter, recorder, wall, log)


def _report(options: DemoOptions, plan: RunPlan, adapter: Any, recorder: DemoRecorder,
            wall: float, log: Callable[[str], None]) -> DemoResult:
    """Summarise the records, write the output files and print the summary."""
    names = list(adapter.action_names)
    violations = limit_violations(adapter, recorder.commands)
    motion = report.joint_motion(names, recorder.measured)
    out = options.output_dir
    video = report.write_media(out, names, recorder.commands, recorder.measured,
                               recorder.frames, wall, options.video_format)
    cost = plan.cost
    run = {'checkpoint': options.checkpoint or 'tiny random model', 'prompt': options.prompt,
           'clock': plan.clock.label, 'clock_reason': plan.clock.reason,
           'strategy': plan.strategy, 'strategy_reason': plan.strategy_reason,
           'calibration': None if cost is None else {
               'step_ms': cost.step_s * MS, 'frame_ms': cost.frame_s * MS,
               'steps_per_frame': cost.steps_per_frame, 'per_period_ms': cost.per_period_s * MS,
               'period_ms': cost.period * MS, 'load': cost.load,
               'real_time_max_load': REAL_TIME_MAX_LOAD}}
    summary = report.build_summary(
        wall=wall, run=run, policy=report.policy_summary(recorder.status, recorder.states_seen),
        latencies=recorder.latencies, messages=recorder.messages,
        rate_topic=adapter.commands[0].topic, violations=len(violations),
        sim_stats=report.window_stats(recorder.sim_stats_at_start, recorder.sim_stats),
        motion=motion, out=out, video=video)
    report.write_summary(summary, out)
    report.log_summary(summary, log)
    return DemoResult(summary, dict(recorder.commands), dict(recorder.measured), violations)


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    """Parse the command line into DemoOptions."""
    parser = argparse.ArgumentParser(
        prog='pi0_sim_demo', description='Drive the simulated bimanual ALOHA with the pi0 node '
        'for a bounded time; without --checkpoint a tiny random model moves the arms '
        'meaninglessly.')
    parser.add_argument('--duration', type=float, default=DEFAULT_DURATION,
                        help='seconds to run once the pi0 node is active (default %(default)s)')
    parser.add_argument('--output-dir', type=pathlib.Path, default=DEFAULT_OUTPUT_DIR,
                        help='folder for summary.json, joints.png and the video '
                        '(default %(default)s)')
    parser.add_argument('--checkpoint', default='', help='pi0 checkpoint folder (openpi or '
                        'LeRobot layout); default: the tiny random model')
    parser.add_argument('--prompt', default=DEFAULT_PROMPT, help='instruction for the policy')
    parser.add_argument('--device', default='cpu', help="torch device, e.g. 'cuda'")
    parser.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                        help='extra pi0_policy_node parameter, repeatable, e.g. '
                        'action_mode=absolute, asset_id=trossen, tokenizer=/path/tok.model, '
                        'dtype=bfloat16')
    parser.add_argument('--time', choices=TIME_MODES, default=TIME_AUTO,
                        help='clock of the sim and the pi0 node: real time, simulated time '
                        '(/clock, lockstep), or auto: measure the sim here and choose '
                        '(default %(default)s)')
    parser.add_argument('--strategy', choices=STRATEGIES, default=STRATEGY_AUTO,
                        help='chunk strategy of the pi0 node; auto: sync for a checkpoint on '
                        'the CPU, else async (default %(default)s)')
    parser.add_argument('--startup-timeout', type=float, default=DEFAULT_STARTUP_TIMEOUT,
                        help='seconds the pi0 node may take to load (default %(default)s)')
    parser.add_argument('--video', choices=VIDEO_FORMATS, default='mp4',
                        help='video format of the top camera (default %(default)s)')
    args = parser.parse_args(argv)
    return DemoOptions(duration=args.duration, output_dir=args.output_dir,
                       checkpoint=args.checkpoint, prompt=args.prompt, device=args.device,
                       time_mode=args.time, strategy=args.strategy, video_format=args.video,
                       startup_timeout=args.startup_timeout,
                       policy_params=parse_param_overrides(args.param))


def parse_param_overrides(items: list[str]) -> dict[str, Any]:
    """
    Turn ``NAME=VALUE`` strings into typed node parameters (values parsed as YAML scalars).

    Args:
        items: Strings such as ``'action_mode=absolute'`` or ``'num_steps=5'``.

    Returns:
        The parameters by name, in order.

    Raises:
        ValueError: An item has no ``=`` or an empty name.

    """
    overrides = {}
    for item in items:
        name, sep, value = item.partition('=')
        if not sep or not name.strip():
            raise ValueError(f'--param {item!r} must look like NAME=VALUE, e.g. '
                             'action_mode=absolute.')
        overrides[name.strip()] = yaml.safe_load(value) if value else ''
    return overrides


def main(args: list[str] | None = None) -> int:
    """Run the demo from the command line; exit 1 if no command flowed or a limit was broken."""
    argv = remove_ros_args(sys.argv)[1:] if args is None else args
    result = run_demo(parse_args(argv))
    commands = result.summary['commands']
    return 0 if sum(commands['messages'].values()) and not commands['limit_violations'] else 1


if __name__ == '__main__':
    sys.exit(main())
