"""
Plan one run of the simulated ALOHA demo: its options, clock, chunk strategy and node parameters.

Pure Python (no rclpy): :mod:`pi0_policy.ros.sim.demo` starts the nodes and records the run;
this module decides what the run does before any node starts and writes the parameters file.

Clock (``--time auto|real|sim``, default auto): before starting the nodes the demo measures what
the sim costs per control period on this machine (``calibrate`` in :mod:`pi0_policy.ros.sim.demo`:
physics step plus the camera frames amortised over their rate, with the sim's own settings, for
about a second) and runs in real time when that is at most ``REAL_TIME_MAX_LOAD`` of the period --
the rest is left to the pi0 node, ROS message transport and the recorder, which share the CPU --
and otherwise on simulated time: the sim publishes ``/clock`` and steps in lockstep with the pi0
node's commands (see :mod:`pi0_policy.ros.sim.sim_node`), and the pi0 node gets ``use_sim_time``. A
full checkpoint on the CPU always runs on simulated time (its inference takes seconds and loads
every core).

Chunk strategy (``--strategy``, default auto): ``async`` for the tiny model or an accelerator;
``sync`` for a checkpoint on the CPU, whose seconds-long inference would leave async only stale
actions: the robot holds while the model infers, executes ``execute_steps`` actions, repeats.
"""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import json
import os
import pathlib
from typing import Any

from pi0_policy.runtime.chunking import available_strategies
from pi0_policy.sim.aloha import CALIBRATION_SECONDS, SimCost
from pi0_policy.sim.report import VIDEO_FORMATS
from pi0_policy.sim.scripted import EPISODE_STEPS
import yaml

# Node names of pi0_policy.ros.policy_node and pi0_policy.ros.sim.sim_node (not imported: this
# module is pure). test_demo compares the first with the node's; the second is read back by
# pi0_policy.ros.sim.demo under sim_node.NODE_NAME from the parameters written here.
POLICY_NODE_NAME = 'pi0_policy_node'
SIM_NODE_NAME = 'aloha_sim'

DEFAULT_DURATION = 20.0  # seconds
DEFAULT_OUTPUT_DIR = 'out/sim_demo'
DEFAULT_PROMPT = 'transfer the cube to the other arm'
PARAMS_FILE = 'sim_bimanual.yaml'
# The demo's default checkpoint (checkpoints/<name> in the source tree or the package share) and
# the file in a checkpoint folder with the node parameters it needs in the demo.
CHECKPOINTS_DIR = 'checkpoints'
DEFAULT_CHECKPOINT = 'pi0_aloha_sim_small'
DEMO_SETTINGS_FILE = 'demo.json'
DEFAULT_STARTUP_TIMEOUT = 180.0  # seconds; loading a full pi0 checkpoint takes a while
PACKAGE = 'pi0_policy'
ROS_PARAMETERS_KEY = 'ros__parameters'
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
    # pi0 checkpoint folder; empty uses the tiny random model (the command line defaults to
    # find_default_checkpoint()).
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
    # 0: one run of ``duration`` seconds; N: N task episodes of EPISODE_STEPS control steps,
    # the sim reset to a new cube pose before each (success reported per reward stage).
    episodes: int = 0

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
        if self.episodes < 0:
            raise ValueError(f'episodes ({self.episodes}) must be >= 0 (0: one timed run).')


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
        return ClockChoice(True, 'a pi0 checkpoint on the CPU (a full-size one takes seconds '
                           'per inference), so the sim runs in lockstep with the pi0 '
                           'node and never outruns it')
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


def plan_run(options: DemoOptions, params: dict[str, Any],
             log: Callable[[str], None] = print, *,
             measure: Callable[[dict[str, Any]], SimCost]) -> RunPlan:
    """
    Choose the chunk strategy and the clock (measuring the sim when needed) and print them.

    Args:
        options: The demo options.
        params: The node parameters, keyed by node name (``sim_bimanual.yaml``).
        log: Where the choices are printed.
        measure: Measures the sim's cost per control period from the sim node's parameters
            (``calibrate`` of :mod:`pi0_policy.ros.sim.demo`); called only for 'auto' time.

    Returns:
        The plan.

    """
    strategy, strategy_reason = choose_strategy(options.strategy, options.checkpoint,
                                                options.device)
    asked = checkpoint_demo_settings(options.checkpoint)['policy'].get('strategy')
    if options.strategy == STRATEGY_AUTO and asked:
        strategy, strategy_reason = asked, f'the checkpoint asks for it ({DEMO_SETTINGS_FILE})'
    cpu_checkpoint = is_cpu_checkpoint(options.checkpoint, options.device)
    cost = None
    if options.time_mode == TIME_AUTO and not cpu_checkpoint:
        log('pi0_sim_demo: measuring the sim on this machine (about '
            f'{CALIBRATION_SECONDS:g} s) to choose real or simulated time')
        cost = measure(params.get(SIM_NODE_NAME, {}).get(ROS_PARAMETERS_KEY, {}))
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


def find_default_checkpoint(name: str = DEFAULT_CHECKPOINT) -> str:
    """Return the demo's trained checkpoint folder (source tree or installed share), or ''."""
    candidates = [pathlib.Path(__file__).resolve().parents[3] / CHECKPOINTS_DIR / name]
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidates.append(pathlib.Path(prefix) / 'share' / PACKAGE / CHECKPOINTS_DIR / name)
    return next((str(path) for path in candidates if (path / 'model.safetensors').is_file()), '')


def checkpoint_demo_settings(checkpoint: str) -> dict[str, dict[str, Any]]:
    """
    Return the node parameters a checkpoint asks the demo for (its ``demo.json``), if any.

    A policy trained on sim recordings saw the cameras the sim rendered then (size, which
    cameras); ``demo.json`` holds ``{"sim": {...}, "policy": {...}}`` parameter overrides that
    reproduce them.

    Raises:
        ValueError: The file is not a JSON object of those two sections.

    """
    path = pathlib.Path(checkpoint) / DEMO_SETTINGS_FILE if checkpoint else None
    if path is None or not path.is_file():
        return {'sim': {}, 'policy': {}}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or set(data) - {'sim', 'policy'}:
        raise ValueError(f'{path} must be a JSON object with the sections "sim" and "policy" '
                         f'(node parameter overrides); got {data!r}.')
    return {'sim': dict(data.get('sim', {})), 'policy': dict(data.get('policy', {}))}


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
    settings = checkpoint_demo_settings(options.checkpoint)
    params[SIM_NODE_NAME][ROS_PARAMETERS_KEY].update(settings['sim'])
    policy.update(settings['policy'])  # its strategy is plan_run's choice for --strategy auto
    policy.update(checkpoint=options.checkpoint, prompt=options.prompt, device=options.device,
                  strategy=strategy, use_sim_time=sim_time)
    # Checkpoint-specific settings of the pi0 node, passed through as given (validated there).
    policy.update(options.policy_params)
    params[SIM_NODE_NAME][ROS_PARAMETERS_KEY]['sim_time'] = sim_time
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    """Parse the command line into DemoOptions."""
    parser = argparse.ArgumentParser(
        prog='pi0_sim_demo', description='Drive the simulated bimanual ALOHA with the pi0 node '
        'for a bounded time or a number of task episodes; by default a small pi0 trained on '
        'scripted demonstrations transfers the cube, --random-model moves the arms '
        'meaninglessly.')
    parser.add_argument('--duration', type=float, default=DEFAULT_DURATION,
                        help='seconds to run once the pi0 node is active (default %(default)s)')
    parser.add_argument('--output-dir', type=pathlib.Path, default=DEFAULT_OUTPUT_DIR,
                        help='folder for summary.json, joints.png and the video '
                        '(default %(default)s)')
    default_checkpoint = find_default_checkpoint()
    parser.add_argument('--checkpoint', default=default_checkpoint,
                        help='pi0 checkpoint folder (openpi or LeRobot layout); default: the '
                        f'small pi0 trained on scripted sim demonstrations ({DEFAULT_CHECKPOINT})')
    parser.add_argument('--random-model', action='store_true',
                        help='use the tiny randomly initialised model (plumbing only)')
    parser.add_argument('--episodes', type=int, default=0,
                        help='evaluate N randomised task episodes of '
                        f'{EPISODE_STEPS} steps (the sim reset between them) instead of one '
                        'timed run; the summary reports success per reward stage')
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
                       checkpoint='' if args.random_model else args.checkpoint,
                       episodes=args.episodes, prompt=args.prompt, device=args.device,
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
