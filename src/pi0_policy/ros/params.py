"""
Declare every parameter of ``pi0_policy_node`` from one table and freeze them into a NodeConfig.

The table ``PARAMETERS`` is the single source of truth: name, type (from the default), default,
description, range or choices, and when a new value takes effect (``Apply``):

- ``READ_ONLY``: set at start-up only (YAML, ``--ros-args -p``): which model and robot are loaded;
- ``CONFIGURE``: read at configure; a set is accepted only while the node is unconfigured (after
  cleanup) and refused with the reason while a run is configured;
- ``LIVE``: validated when set (a refused value keeps the old one and the reason is returned)
  and applied at once to the running node.

Every set is validated in full (type, range, choices, cross-field checks of the frozen config)
by ``check_update`` before rclpy accepts it, so no parameter says yes and does nothing.
``declare_parameters`` declares them all on a node; ``read_node_config`` turns their values into
the frozen ``NodeConfig`` (in ``on_configure`` and after a live change) -- callbacks never read
parameters. Robot facts (topics, joints, limits, command interfaces, cameras) are not parameters:
they come from the robot YAML through the embodiment adapter.
"""

from collections.abc import Mapping
from dataclasses import dataclass
import enum
from typing import Any

from pi0_policy.model.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, SCHEDULES as RTC_SCHEDULES
from pi0_policy.runtime.chunking import available_strategies
from pi0_policy.runtime.config import (
    BACKEND_INPROCESS, BACKENDS, DEFAULT_MAX_IMAGE_PIXELS, DTYPES, ExecutionConfig, NodeConfig,
    PolicyLoadConfig,
    ReportingConfig)
from pi0_policy.runtime.pipeline import ACTION_MODE_ROBOT, ACTION_MODES
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.node import Node

ParamValue = bool | int | float | str
_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
# Largest value of an unbounded integer parameter.
_INT_MAX = 2 ** 31 - 1
STRATEGIES = available_strategies()
# Torch device used when the 'device' parameter is empty (launch files pass '' for "not given").
DEFAULT_DEVICE = 'cpu'


class Apply(enum.Enum):
    """When a new value of a parameter takes effect."""

    # Start-up only: rclpy refuses any later set.
    READ_ONLY = 'read-only: set at start-up (YAML or --ros-args -p)'
    # At configure: settable only while unconfigured.
    CONFIGURE = 'takes effect at configure: settable only while unconfigured (cleanup first)'
    # At once, validated when set.
    LIVE = 'live: validated when set and applied at once'


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter."""

    name: str
    # The default also fixes the type (bool, int, float or str).
    default: ParamValue
    description: str
    # Inclusive (low, high) for numbers; None when unbounded.
    range: tuple[float, float] | None = None  # noqa: A003 - the ROS descriptor's word
    # Allowed values of a string parameter; empty when free text.
    choices: tuple[str, ...] = ()
    # When a new value takes effect; None: READ_ONLY if read_only is set, else CONFIGURE.
    apply: Apply | None = None
    # Shorthand for apply=Apply.READ_ONLY (rclpy refuses every set after start-up).
    read_only: bool = False

    def __post_init__(self) -> None:
        """Resolve ``apply`` and ``read_only`` into one consistent pair."""
        if self.apply is None:
            object.__setattr__(self, 'apply', Apply.READ_ONLY if self.read_only
                               else Apply.CONFIGURE)
        object.__setattr__(self, 'read_only', self.apply == Apply.READ_ONLY)

    @property
    def type(self) -> type:  # noqa: A003 - the ROS descriptor's word
        """Return the Python type of the parameter."""
        return type(self.default)

    def descriptor(self) -> ParameterDescriptor:
        """Return the ROS ParameterDescriptor: type, description, range, read-only."""
        descriptor = ParameterDescriptor(
            name=self.name, type=_TYPES[self.type],
            description=f'{self.description} [{self.apply.value}]', read_only=self.read_only)
        if self.choices:
            descriptor.additional_constraints = f'one of {list(self.choices)}'
        if self.range is not None and self.type is float:
            low, high = self.range
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                  to_value=float(high))]
        elif self.range is not None and self.type is int:
            low, high = self.range
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
        return descriptor


RO, LIVE = Apply.READ_ONLY, Apply.LIVE
# New parameters: add a row; pick apply=LIVE only when the node applies the new value at once
# (``PolicyNode._apply_live``), else leave CONFIGURE (or RO for what needs a new process).
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec('autostart', False, 'Configure and activate right after start-up.',
              apply=RO),
    ParamSpec('robot', 'aloha', 'Robot config name (config/robots/<name>.yaml) or a YAML path; '
              'topics, joints, limits, cameras and command interfaces come from it.',
              apply=RO),
    ParamSpec('policy_backend', BACKEND_INPROCESS, "Where pi0 runs: 'inprocess' (in this "
              "node), 'subprocess' (a child 'pi0-policy serve' on loopback: the control process "
              "runs no model code) or 'remote' (any openpi-protocol server at policy_url; the "
              'model parameters below then belong to the server).', choices=BACKENDS,
              apply=RO),
    ParamSpec('policy_url', '', "remote: the server, e.g. 'ws://gpu-box:8000'.",
              apply=RO),
    ParamSpec('policy_api_key', '', "remote: sent as 'Authorization: Api-Key <key>'; empty "
              'sends none.', apply=RO),
    ParamSpec('policy_timeout', 10.0, 'subprocess/remote: seconds one inference request may '
              'take before the connection is dropped and reopened (the robot holds meanwhile).',
              range=(0.01, 600.0), apply=RO),
    ParamSpec('checkpoint', '', 'pi0 checkpoint folder (openpi or LeRobot layout); empty loads '
              'a tiny random model for tests and dry runs.', apply=RO),
    ParamSpec('device', DEFAULT_DEVICE, "Torch device: 'cpu', 'cuda' or 'cuda:<index>'; empty "
              f"means '{DEFAULT_DEVICE}'.", apply=RO),
    ParamSpec('dtype', 'float32', 'Torch dtype of the model.', choices=DTYPES, apply=RO),
    ParamSpec('asset_id', '', 'Norm-stats asset id in the checkpoint (may be nested, e.g. '
              "lerobot/aloha_sim_transfer_cube_human); empty uses the robot config's "
              "norm_stats_asset_id, else the checkpoint's only asset.", apply=RO),
    ParamSpec('tokenizer', '', 'PaliGemma tokenizer: a SentencePiece .model file or a Hugging '
              'Face tokenizer folder (tokenizer.json); empty looks in the checkpoint folder '
              '(tokenizer.model, paligemma_tokenizer.model or tokenizer.json, also under '
              'assets/ and in assets/ of the parent folder).', apply=RO),
    ParamSpec('action_mode', ACTION_MODE_ROBOT, "How the checkpoint's actions relate to the "
              "state: 'robot' = the robot config's per-joint delta/absolute modes; 'absolute' = "
              'no delta transform (checkpoints trained on absolute actions, e.g. openpi '
              'pi0_aloha_sim).', choices=ACTION_MODES, apply=RO),
    ParamSpec('torch_threads', 1, 'Intra-op torch threads; keep small so that inference does '
              'not starve the 50 Hz control timer.', range=(1, 256), apply=RO),
    ParamSpec('control_priority', 10, 'Real-time (SCHED_FIFO) priority of the control thread, '
              'as ros2_control does; used where the OS permits it (root, CAP_SYS_NICE or an '
              'rtprio limit), otherwise a warning and normal scheduling. 0 = normal scheduling.',
              range=(0, 99), apply=RO),
    ParamSpec('inference_niceness', 10, 'Added to the nice value of the inference thread '
              '(Linux) so that the control timer preempts inference.', range=(0, 19),
              apply=RO),
    ParamSpec('num_steps', 10, 'Flow-matching integration steps per inference.',
              range=(1, 100), apply=LIVE),
    ParamSpec('seed', 0, 'Seed of the sampling noise.', range=(0, _INT_MAX)),
    ParamSpec('prompt', '', 'Instruction used until one arrives on ~/instruction or '
              '~/set_instruction.', apply=LIVE),
    ParamSpec('max_instruction_chars', 2000, 'Longest instruction accepted (characters); longer '
              'ones are rejected with a diagnostic.', range=(1, 1_000_000), apply=LIVE),
    ParamSpec('strategy', 'async', 'Chunk execution: sync (execute execute_steps actions, then '
              'infer), async (infer while executing, latency-aware), ensemble (ACT temporal '
              'ensembling) or rtc (Real-Time Chunking: async, inference every execute_steps '
              'actions, guided by the unexecuted rest of the current chunk).',
              choices=STRATEGIES),
    ParamSpec('control_rate_hz', 50.0, 'Rate of the control loop and of the commands (Hz); the '
              "chunk's actions are spaced at the robot config's control_rate_hz and sampled "
              'with linear interpolation when the rates differ.',
              range=(1.0, 1000.0)),
    ParamSpec('execute_steps', 25, 'sync: actions executed from each chunk before the robot '
              'holds and the next inference starts. rtc: the execution horizon s, actions '
              'executed from each chunk before the next inference starts (needs d <= s <= H - d '
              'for the inference delay d, in chunk steps).', range=(1, 10_000),
              apply=LIVE),
    ParamSpec('rtc_schedule', RTC_SCHEDULES[0], 'rtc: soft mask over the previous chunk '
              '(exp, linear, ones, zeros = hard mask of the first d actions).',
              choices=RTC_SCHEDULES, apply=LIVE),
    ParamSpec('rtc_max_guidance_weight', DEFAULT_MAX_GUIDANCE_WEIGHT, 'rtc: clip beta of the '
              'guidance weight (0 disables guidance).', range=(0.0, 1000.0), apply=LIVE),
    ParamSpec('inference_delay_s', 0.0, 'Benchmarking: seconds added to every inference, to '
              'compare chunk strategies under latency. 0 in normal runs.', range=(0.0, 60.0),
              apply=LIVE),
    ParamSpec('request_remaining', 25, 'async: request the next inference once at most this many '
              'actions are left in the current chunk.', range=(0, 10_000), apply=LIVE),
    ParamSpec('ensemble_coefficient', 0.01, 'ensemble: ACT weight coefficient m in '
              'w_j = exp(-m * j), j = 0 the oldest chunk.', range=(0.0, 10.0), apply=LIVE),
    ParamSpec('max_chunk_age', 2.0, 'async/ensemble: oldest a chunk may be (s since its '
              'observation) for an action to be taken from it; sync ignores it (the robot holds '
              'while inferring).', range=(0.01, 600.0), apply=LIVE),
    ParamSpec('max_age', 0.2, 'Seconds after which an input (camera, joint states, odometry) is '
              'stale: no new inference and the robot holds.', range=(0.001, 60.0), apply=LIVE),
    ParamSpec('enabled_at_start', True, 'Send commands right after activation; otherwise wait '
              'for ~/enable.'),
    ParamSpec('max_image_pixels', DEFAULT_MAX_IMAGE_PIXELS, 'Largest camera image accepted '
              '(width x height), checked from the header before decoding; larger images are '
              'rejected with a diagnostic and the robot holds.', range=(1, _INT_MAX), apply=LIVE),
    ParamSpec('velocity_scale', 1.0, "Fraction of each joint's max_velocity the safety filter "
              'allows per control tick.', range=(0.01, 1.0), apply=LIVE),
    ParamSpec('odom_topic', '/odom', 'nav_msgs/Odometry topic of the base velocity, used when '
              'the robot config puts the base in the state (base.in_state).', apply=RO),
    ParamSpec('base_frame_id', 'base_link', 'frame_id of TwistStamped base commands.', apply=LIVE),
    ParamSpec('status_rate_hz', 2.0, 'PolicyStatus rate (Hz); also sent on each state change.',
              range=(0.1, 100.0), apply=LIVE),
    ParamSpec('diagnostics_rate_hz', 1.0, '/diagnostics rate (Hz).', range=(0.1, 100.0),
              apply=LIVE),
    ParamSpec('latency_window', 100, 'Inference latencies kept for the p50/p99 statistics.',
              range=(1, 100_000)),
    ParamSpec('preview', True, 'Publish the rviz preview (ghost JointState, MarkerArray) of '
              'each chunk.', apply=LIVE),
    ParamSpec('preview_frame', 'base_link', 'Frame of the MarkerArray chunk preview.', apply=LIVE),
)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)
SPECS = {spec.name: spec for spec in PARAMETERS}


def declare_parameters(node: Node) -> None:
    """Declare every parameter of ``PARAMETERS`` on ``node`` with its descriptor."""
    for spec in PARAMETERS:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())


def _checked(values: Mapping[str, Any]) -> dict[str, ParamValue]:
    """Return ``values`` completed with defaults, after type, range and choice checks."""
    unknown = sorted(set(values) - set(PARAMETER_NAMES))
    if unknown:
        raise ValueError(f'Unknown parameters {unknown}; expected names from {PARAMETER_NAMES}.')
    checked: dict[str, ParamValue] = {}
    for spec in PARAMETERS:
        value = values.get(spec.name, spec.default)
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not spec.type:
            raise ValueError(f"Parameter '{spec.name}' is {value!r} ({type(value).__name__}); "
                             f'expected a {spec.type.__name__}.')
        if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
            raise ValueError(f"Parameter '{spec.name}' is {value!r}; expected a value in "
                             f'[{spec.range[0]}, {spec.range[1]}].')
        if spec.choices and value not in spec.choices:
            raise ValueError(f"Parameter '{spec.name}' is {value!r}; expected one of "
                             f'{list(spec.choices)}.')
        checked[spec.name] = value
    return checked


def node_config_from_values(values: Mapping[str, Any]) -> NodeConfig:
    """
    Build the frozen NodeConfig from parameter values (missing ones take their defaults).

    Args:
        values: Parameter name to value.

    Returns:
        The validated configuration.

    Raises:
        ValueError: A name is unknown or a value has the wrong type, range or choice, or the
            combination is invalid; the message names the parameter and the value.

    """
    v = _checked(values)
    return NodeConfig(
        robot=v['robot'], prompt=v['prompt'], max_instruction_chars=v['max_instruction_chars'],
        max_age=v['max_age'], enabled_at_start=v['enabled_at_start'],
        base_frame_id=v['base_frame_id'], odom_topic=v['odom_topic'],
        velocity_scale=v['velocity_scale'], control_priority=v['control_priority'],
        max_image_pixels=v['max_image_pixels'],
        policy=PolicyLoadConfig(
            checkpoint=v['checkpoint'] or None, device=v['device'] or DEFAULT_DEVICE,
            dtype=v['dtype'], num_steps=v['num_steps'], asset_id=v['asset_id'] or None,
            action_mode=v['action_mode'], tokenizer=v['tokenizer'] or None,
            seed=v['seed'], backend=v['policy_backend'], url=v['policy_url'] or None,
            api_key=v['policy_api_key'] or None, request_timeout=v['policy_timeout'],
            rtc_schedule=v['rtc_schedule'],
            rtc_max_guidance_weight=v['rtc_max_guidance_weight'],
            inference_delay_s=v['inference_delay_s'],
            torch_threads=v['torch_threads'], inference_niceness=v['inference_niceness']),
        execution=ExecutionConfig(
            strategy=v['strategy'], control_rate_hz=v['control_rate_hz'],
            execute_steps=v['execute_steps'], request_remaining=v['request_remaining'],
            ensemble_coefficient=v['ensemble_coefficient'], max_chunk_age=v['max_chunk_age']),
        reporting=ReportingConfig(
            status_rate_hz=v['status_rate_hz'], diagnostics_rate_hz=v['diagnostics_rate_hz'],
            latency_window=v['latency_window'], preview=v['preview'],
            preview_frame=v['preview_frame']))


def check_update(current: Mapping[str, Any], updates: Mapping[str, Any], *,
                 configured: bool) -> NodeConfig:
    """
    Validate new parameter values together with the current ones, before they are accepted.

    Args:
        current: Every parameter's current value.
        updates: The new values of some parameters.
        configured: Whether the node has a configured run (CONFIGURE parameters are refused).

    Returns:
        The NodeConfig the values would give.

    Raises:
        ValueError: A parameter is unknown, cannot change now, or the values are invalid; the
            message names the parameter, the value and what to do.

    """
    for name, value in updates.items():
        spec = SPECS.get(name)
        if spec is None:
            raise ValueError(f"Unknown parameter '{name}'; expected one of {PARAMETER_NAMES}.")
        if configured and spec.apply == Apply.CONFIGURE and value != current.get(name):
            raise ValueError(
                f"Parameter '{name}' with the value {value!r} cannot change while the node is "
                f'configured: it {spec.apply.value}. Deactivate and clean up the node, set it, '
                'then configure again.')
    return node_config_from_values({**current, **updates})


def read_node_config(node: Node) -> NodeConfig:
    """
    Read every declared parameter of ``node`` once and freeze it into a NodeConfig.

    Raises:
        ValueError: As ``node_config_from_values``.

    """
    return node_config_from_values({name: node.get_parameter(name).value
                                    for name in PARAMETER_NAMES})
