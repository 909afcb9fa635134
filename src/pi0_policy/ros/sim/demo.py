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

Before the nodes start, :mod:`pi0_policy.sim.plan` (pure) chooses the clock (``--time``: real or
simulated time; for 'auto' it uses ``calibrate`` here, which measures the sim on this machine)
and the pi0 node's chunk strategy (``--strategy``), and writes the parameters file.
"""

from collections import defaultdict
from collections.abc import Callable
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
from pi0_policy.ros.sim.sim_node import config_from_values as sim_config_from_values
# SIM_NODE_NAME comes from the node itself: the parameters that pi0_policy.sim.plan writes under
# its own copy of the name are read back under this one.
from pi0_policy.ros.sim.sim_node import DIAGNOSTIC_NAME, NODE_NAME as SIM_NODE_NAME
from pi0_policy.sim import plan as sim_plan
from pi0_policy.sim import report
from pi0_policy.sim.aloha import (AlohaSim, CALIBRATION_SECONDS, measure_cost, SimCost,
                                  steps_per_frame)
# Re-exported: the run planning lived here before pi0_policy.sim.plan.
from pi0_policy.sim.plan import (  # noqa: F401
    choose_clock, choose_strategy, ClockChoice, CPU_DEVICE, DEFAULT_DURATION, DEFAULT_OUTPUT_DIR,
    DEFAULT_PROMPT, DEFAULT_STARTUP_TIMEOUT, DemoOptions, find_params_file, is_cpu_checkpoint,
    load_params, MS, PACKAGE, PARAMS_FILE, parse_args, parse_param_overrides, POLICY_NODE_NAME,
    REAL_TIME_MAX_LOAD, ROS_PARAMETERS_KEY, RunPlan, STRATEGIES, STRATEGY_AUTO,
    STRATEGY_CPU_CHECKPOINT, STRATEGY_DEFAULT, TIME_AUTO, TIME_MODES, TIME_REAL, TIME_SIM,
    write_params)
# Re-exported: the report writers and their file names lived here before pi0_policy.sim.report.
from pi0_policy.sim.report import (  # noqa: F401
    DemoResult, LIMIT_TOLERANCE, limit_violations, PLOT_FILE, SUMMARY_FILE, VIDEO_FORMATS,
    VIDEO_STEM, write_plot, write_video)
from pi0_policy.sim.scripted import EPISODE_STEPS, StageReport
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, Int32
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

POLICY_MODULE = 'pi0_policy.ros.policy_node'
SIM_MODULE = 'pi0_policy.ros.sim.sim_node'
DEFAULT_ROBOT = 'aloha'
PARAMS_OUT_FILE = 'params.yaml'
RECORDER_NODE_NAME = 'pi0_sim_demo_recorder'
# Seconds to wait for a service answer, for a process to stop, between liveness checks.
SERVICE_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL_PERIOD = 0.5
LOG_TAIL_LINES = 30
# Exit codes of a node stopped by SIGINT: rclpy's clean shutdown, or Python's default handler.
CLEAN_EXIT_CODES = (0, -signal.SIGINT)
# Camera frames kept for the video (10 Hz x 60 s).
MAX_FRAMES = 600
# The sim's per-step task reward and its next-episode service (pi0_policy.ros.sim.sim_node).
REWARD_TOPIC = f'/{SIM_NODE_NAME}/reward'
RESET_SERVICE = f'/{SIM_NODE_NAME}/reset_episode'
# Wall seconds an episode may take at most (simulated time waits for a slow policy).
EPISODE_TIMEOUT = 900.0
ACTIVE_LABEL = 'active'


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
        The plan (see :func:`pi0_policy.sim.plan.plan_run`; the sim is measured by
        :func:`calibrate`).

    """
    return sim_plan.plan_run(options, params, log, measure=calibrate)


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
        # The sim's reward after every step, one list per episode (the current one last).
        self.rewards: list[list[int]] = [[]]
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
        self.create_subscription(Int32, REWARD_TOPIC, self._on_reward, 100)
        self.get_state = self.create_client(GetState, f'/{POLICY_NODE_NAME}/get_state')
        self.enable = self.create_client(SetBool, f'/{POLICY_NODE_NAME}/enable')
        self.reset_episode = self.create_client(Trigger, RESET_SERVICE)

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
            self.rewards = [[]]
            self.sim_stats_at_start = dict(self.sim_stats)

    def start_episode(self) -> None:
        """Count rewards into a new episode from now on."""
        with self._lock:
            if self.rewards[-1]:
                self.rewards.append([])

    def episode_steps(self) -> int:
        """Return the rewards received in the current episode."""
        with self._lock:
            return len(self.rewards[-1])

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

    def _on_reward(self, msg: Int32) -> None:
        with self._lock:
            if self._recording:
                self.rewards[-1].append(int(msg.data))

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


def _run_episodes(recorder: 'DemoRecorder', processes: dict, episodes: int,
                  log: Callable[[str], None]) -> None:
    """Run task episodes: hold the policy, reset the sim, enable, wait EPISODE_STEPS steps."""
    for episode in range(episodes):
        call_service(recorder.enable, SetBool.Request(data=False), 'hold the pi0 node')
        answer = call_service(recorder.reset_episode, Trigger.Request(), 'reset the sim')
        recorder.start_episode()
        call_service(recorder.enable, SetBool.Request(data=True), 'enable the pi0 node')
        deadline = time.monotonic() + EPISODE_TIMEOUT
        while recorder.episode_steps() < EPISODE_STEPS:
            _check_alive(processes)
            if time.monotonic() > deadline:
                raise RuntimeError(f'Episode {episode + 1} did not reach {EPISODE_STEPS} sim '
                                   f'steps within {EPISODE_TIMEOUT:g} s.')
            time.sleep(POLL_PERIOD / 5)
        rewards = recorder.rewards[-1][:EPISODE_STEPS]
        log(f'pi0_sim_demo: episode {episode + 1}/{episodes} ({answer.message}): max reward '
            f'{max(rewards)}')


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
        recorder.restart_clock()
        if options.episodes:
            _run_episodes(recorder, processes, options.episodes, log)
        else:
            log(f'pi0_sim_demo: running for {options.duration:g} s')
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
    episodes = [r for r in recorder.rewards if r]
    if options.episodes:
        episodes = [r[:EPISODE_STEPS] for r in episodes[:options.episodes]]
    task = StageReport.from_rewards(episodes)
    summary['task'] = {'episodes_run': 'task episodes' if options.episodes else 'one timed run',
                       **task.as_dict()}
    report.write_summary(summary, out)
    report.log_summary(summary, log)
    log(f'  task (gym-aloha transfer_cube reward stages): {task.describe()}')
    return DemoResult(summary, dict(recorder.commands), dict(recorder.measured), violations)


def main(args: list[str] | None = None) -> int:
    """Run the demo from the command line; exit 1 if no command flowed or a limit was broken."""
    argv = remove_ros_args(sys.argv)[1:] if args is None else args
    result = run_demo(parse_args(argv))
    commands = result.summary['commands']
    return 0 if sum(commands['messages'].values()) and not commands['limit_violations'] else 1


if __name__ == '__main__':
    sys.exit(main())
