"""
Frozen configuration of the policy node, built once from its parameters in ``on_configure``.

Pure Python (no rclpy): ``pi0_policy.ros.params`` declares the parameters and fills these
dataclasses; callbacks only read the frozen snapshot. Every field is validated here, so a bad
value fails ``configure`` with a message that names the parameter, the value and what to do.
``ExecutionConfig`` (chunk execution) is defined here too; the ``SafetyConfig`` of the safety
filter needs the robot's limits, so it is built at configure time from the adapter and
``velocity_scale``.
"""

from dataclasses import dataclass
import math
import re

from pi0_policy.model.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, SCHEDULES as RTC_SCHEDULES
from pi0_policy.runtime.pipeline import ACTION_MODE_ROBOT, ACTION_MODES

# Torch dtypes the policy can run in (pi0_policy.runtime.policy.DTYPES).
DTYPES = ('float32', 'bfloat16')
# Accepted device strings: cpu, cuda, cuda:<index>.
DEVICE_PATTERN = re.compile(r'^(cpu|cuda(:\d+)?)$')
# Largest nice increment of the inference thread.
MAX_NICENESS = 19
# Largest camera image accepted by default (pixels), checked before decoding: 16 MP.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# Largest SCHED_FIFO priority on Linux.
MAX_RT_PRIORITY = 99
# Where the policy runs (pi0_policy.serving.backends): in the node's process, in a child
# `pi0-policy serve` on loopback, or behind an openpi-protocol server at policy_url.
BACKEND_INPROCESS = 'inprocess'
BACKEND_SUBPROCESS = 'subprocess'
BACKEND_REMOTE = 'remote'
BACKENDS = (BACKEND_INPROCESS, BACKEND_SUBPROCESS, BACKEND_REMOTE)


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    """Raise the one ValueError shape used for bad node parameters."""
    if not ok:
        raise ValueError(f"Parameter '{name}' is {value!r}; expected {expected}. Fix the "
                         'parameter (YAML or --ros-args -p) and configure again.')


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'ExecutionConfig.{name} must be an int, got {value!r} '
                        f'({type(value).__name__}).')
    if value < minimum:
        raise ValueError(f'ExecutionConfig.{name}={value} is too small; expected >= {minimum}.')


@dataclass(frozen=True)
class ExecutionConfig:
    """Settings of chunk execution (one frozen snapshot, validated on construction)."""

    # Strategy name: 'sync', 'async', 'ensemble' or 'rtc' (see available_strategies()).
    strategy: str = 'async'
    # Rate of next_action() calls (control ticks), Hz; dt = 1 / control_rate_hz.
    control_rate_hz: float = 50.0
    # Rate the policy's actions are spaced at, Hz (the robot config's control_rate_hz: the rate of
    # the data the checkpoint was trained on): action k of a chunk is meant for
    # obs_time + k / chunk_rate_hz. None: the same as control_rate_hz. When it differs, each tick
    # interpolates linearly between the two actions around its time.
    chunk_rate_hz: float | None = None
    # Chunk length H the policy produces, when known; every chunk and, for sync, execute_steps
    # are checked against it.
    horizon: int | None = None
    # sync: chunk actions executed from each chunk (a span of execute_steps / chunk_rate_hz
    # seconds) before the robot holds and the next inference starts. rtc: the execution horizon
    # s, actions executed from each chunk before the next inference starts (d <= s <= H - d).
    execute_steps: int = 25
    # async: request the next inference once at most this many actions are left in the chunk
    # (>= H requests on every tick).
    request_remaining: int = 25
    # async: ticks added to the latency estimate; the request also fires once the actions left
    # are <= estimated delay (ticks) + this margin, so the next chunk lands in time.
    latency_margin_ticks: int = 2
    # Number of recent chunk delays (tick that took the chunk - obs_time) behind the estimate.
    latency_window: int = 20
    # Quantile of the recent delays used as the latency estimate; 1.0 takes the maximum.
    latency_quantile: float = 1.0
    # Delays ignored after construction (cold start: the first inference allocates / compiles).
    latency_skip_first: int = 1
    # ensemble: ACT coefficient m of w_j = exp(-m * j), j = 0 the oldest chunk; m > 0 is smoother.
    ensemble_coefficient: float = 0.01
    # async, ensemble: oldest a chunk may be (seconds since its observation) for an action to be
    # taken from it; older chunks are discarded (ExecutorStats.chunks_too_old). sync ignores it:
    # the robot holds while the policy infers and each chunk starts at its action 0 on arrival.
    max_chunk_age: float = 2.0
    # Plan-clock tolerance, ticks: drifting further from now re-synchronises (skips) the plan.
    max_tick_lag: float = 1.5

    def __post_init__(self) -> None:
        """Check the fields and their combinations; errors name the values involved."""
        # The registry imports this module (strategies take an ExecutionConfig): import late.
        from pi0_policy.runtime.chunking import get_strategy
        get_strategy(self.strategy)
        if not (math.isfinite(self.control_rate_hz) and self.control_rate_hz > 0):
            raise ValueError(f'ExecutionConfig.control_rate_hz={self.control_rate_hz!r} must be a '
                             'finite positive rate in Hz (e.g. 50.0).')
        if self.chunk_rate_hz is not None:
            rate = self.chunk_rate_hz
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                raise TypeError(
                    f'ExecutionConfig.chunk_rate_hz must be a number of Hz or None, got {rate!r} '
                    f'({type(rate).__name__}); control_rate_hz={self.control_rate_hz}.')
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(
                    f'ExecutionConfig.chunk_rate_hz={rate!r} must be a finite positive rate in Hz '
                    "(the spacing of the policy's actions: the robot config's control_rate_hz), "
                    f'or None to use control_rate_hz={self.control_rate_hz}.')
        for name, minimum in (('execute_steps', 1), ('request_remaining', 0),
                              ('latency_margin_ticks', 0), ('latency_window', 1),
                              ('latency_skip_first', 0)):
            _check_int(name, getattr(self, name), minimum)
        if self.horizon is not None:
            _check_int('horizon', self.horizon, 1)
            if self.strategy == 'sync' and self.execute_steps > self.horizon:
                raise ValueError(
                    f'ExecutionConfig.execute_steps={self.execute_steps} exceeds '
                    f'horizon={self.horizon}: a chunk has only {self.horizon} actions; '
                    f'set execute_steps <= {self.horizon}.')
            if self.strategy == 'rtc' and self.execute_steps >= self.horizon:
                raise ValueError(
                    f'ExecutionConfig.execute_steps={self.execute_steps} (the RTC execution '
                    f'horizon s) must be below horizon={self.horizon}: RTC needs '
                    f'd <= s <= H - d for the inference delay d; set execute_steps <= '
                    f'{self.horizon - 1}, about H/2 = {self.horizon // 2} for the largest delay.')
        if not 0.0 < self.latency_quantile <= 1.0:
            raise ValueError(f'ExecutionConfig.latency_quantile={self.latency_quantile!r} must be '
                             'in (0, 1]; use 1.0 for the maximum of recent delays.')
        if not math.isfinite(self.ensemble_coefficient):
            raise ValueError(f'ExecutionConfig.ensemble_coefficient={self.ensemble_coefficient!r} '
                             'must be finite (ACT uses 0.01).')
        if not self.max_tick_lag > 1.0:
            raise ValueError(f'ExecutionConfig.max_tick_lag={self.max_tick_lag!r} must exceed 1 '
                             'tick, or the plan clock re-synchronises on ordinary jitter.')
        if not self.max_chunk_age > 0:
            raise ValueError(f'ExecutionConfig.max_chunk_age={self.max_chunk_age!r} must be a '
                             'positive number of seconds.')

    @property
    def dt(self) -> float:
        """Return the control period in seconds."""
        return 1.0 / self.control_rate_hz

    @property
    def resolved_chunk_rate_hz(self) -> float:
        """Return the rate of the actions in a chunk: chunk_rate_hz, or control_rate_hz if None."""
        return self.control_rate_hz if self.chunk_rate_hz is None else float(self.chunk_rate_hz)

    @property
    def chunk_dt(self) -> float:
        """Return the time between consecutive actions of a chunk, seconds."""
        return 1.0 / self.resolved_chunk_rate_hz


@dataclass(frozen=True)
class PolicyLoadConfig:
    """How to load and run the π0 model."""

    # Checkpoint folder; None loads a tiny random model (tests, demos without weights).
    checkpoint: str | None
    # Torch device ('cpu', 'cuda', 'cuda:1').
    device: str
    # Torch dtype name, one of DTYPES.
    dtype: str
    # Flow-matching integration steps per inference.
    num_steps: int
    # Norm-stats asset id in the checkpoint (may be nested, e.g. 'lerobot/aloha_sim_...'); None
    # uses the robot config's norm_stats_asset_id (then the only asset of the checkpoint).
    asset_id: str | None
    # Seed of the sampling noise generator.
    seed: int
    # Intra-op torch threads (1 keeps the 50 Hz timer on time on small machines).
    torch_threads: int
    # Added to the nice value of the inference thread (Linux), so control preempts inference.
    inference_niceness: int = 0
    # How the checkpoint's actions relate to the state (pipeline ACTION_MODES): 'robot' applies
    # the robot config's per-joint delta/absolute; 'absolute' none (e.g. openpi pi0_aloha_sim).
    action_mode: str = ACTION_MODE_ROBOT
    # PaliGemma tokenizer (SentencePiece .model or Hugging Face tokenizer folder); None looks in
    # the checkpoint folder.
    tokenizer: str | None = None
    # Where the model runs: one of BACKENDS.
    backend: str = BACKEND_INPROCESS
    # remote: ws://host:port of an openpi-protocol server.
    url: str | None = None
    # remote: sent as 'Authorization: Api-Key <key>' when set.
    api_key: str | None = None
    # remote/subprocess: seconds one inference request may take before it is abandoned.
    request_timeout: float = 10.0
    # RTC soft-mask schedule over the previous chunk's leftover (model.rtc.SCHEDULES).
    rtc_schedule: str = RTC_SCHEDULES[0]
    # RTC guidance clip beta (0 disables guidance: RTC then runs as async).
    rtc_max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT
    # Seconds added to every inference (benchmarking chunk strategies under latency).
    inference_delay_s: float = 0.0

    def __post_init__(self) -> None:
        """Validate the fields."""
        _require(self.backend in BACKENDS, 'policy_backend', self.backend,
                 f'one of {list(BACKENDS)}')
        _require(self.backend != BACKEND_REMOTE or bool(self.url), 'policy_url', self.url,
                 "a server URL such as 'ws://gpu-box:8000' when policy_backend is 'remote'")
        _require(self.request_timeout > 0.0, 'policy_timeout', self.request_timeout,
                 'a positive number of seconds')
        _require(DEVICE_PATTERN.match(self.device) is not None, 'device', self.device,
                 "'cpu', 'cuda' or 'cuda:<index>'")
        _require(self.dtype in DTYPES, 'dtype', self.dtype, f'one of {list(DTYPES)}')
        _require(self.num_steps >= 1, 'num_steps', self.num_steps, 'an integer >= 1')
        _require(self.seed >= 0, 'seed', self.seed, 'an integer >= 0')
        _require(self.torch_threads >= 1, 'torch_threads', self.torch_threads, 'an integer >= 1')
        _require(0 <= self.inference_niceness <= MAX_NICENESS, 'inference_niceness',
                 self.inference_niceness, f'an integer in [0, {MAX_NICENESS}]')
        _require(self.action_mode in ACTION_MODES, 'action_mode', self.action_mode,
                 f"one of {list(ACTION_MODES)} ('absolute' for checkpoints trained on absolute "
                 'actions)')
        _require(self.asset_id is None or bool(self.asset_id.strip()), 'asset_id',
                 self.asset_id, "None (the robot config's norm_stats_asset_id) or an asset id")
        _require(self.rtc_schedule in RTC_SCHEDULES, 'rtc_schedule', self.rtc_schedule,
                 f'one of {list(RTC_SCHEDULES)}')
        _require(self.rtc_max_guidance_weight >= 0, 'rtc_max_guidance_weight',
                 self.rtc_max_guidance_weight, 'a number >= 0')
        _require(self.inference_delay_s >= 0, 'inference_delay_s', self.inference_delay_s,
                 'a number of seconds >= 0')


@dataclass(frozen=True)
class ReportingConfig:
    """What the node reports and how often."""

    # PolicyStatus rate (Hz); a status is also sent on every state change.
    status_rate_hz: float
    # /diagnostics rate (Hz).
    diagnostics_rate_hz: float
    # Inference latencies kept for the p50/p99 statistics.
    latency_window: int
    # Whether to publish the rviz preview (ghost JointState and MarkerArray) per chunk.
    preview: bool
    # Frame of the MarkerArray preview.
    preview_frame: str

    def __post_init__(self) -> None:
        """Validate the fields."""
        for name in ('status_rate_hz', 'diagnostics_rate_hz'):
            value = getattr(self, name)
            _require(value > 0.0, name, value, 'a rate > 0 Hz')
        _require(self.latency_window >= 1, 'latency_window', self.latency_window,
                 'an integer >= 1')
        _require(bool(self.preview_frame), 'preview_frame', self.preview_frame,
                 'a non-empty frame id')


@dataclass(frozen=True)
class NodeConfig:
    """Everything the policy node needs, frozen at configure time."""

    # Robot config name ('aloha') or YAML path; topics, joints and limits come from it.
    robot: str
    # Instruction used until one arrives on ~/instruction or ~/set_instruction.
    prompt: str
    # Longest instruction accepted (characters); longer ones are rejected with a diagnostic.
    max_instruction_chars: int
    # Seconds after which an input is stale (no inference, hold).
    max_age: float
    # Whether commands flow right after activation (else wait for ~/enable).
    enabled_at_start: bool
    # Frame id of TwistStamped base commands.
    base_frame_id: str
    # Odometry topic, subscribed when the robot config puts the base velocity in the state.
    odom_topic: str
    # Fraction of each dim's max_velocity the safety filter allows.
    velocity_scale: float
    policy: PolicyLoadConfig
    execution: ExecutionConfig
    reporting: ReportingConfig
    # SCHED_FIFO priority of the control thread (1-99) where the OS permits it; 0 = normal.
    control_priority: int = 0
    # Largest camera image accepted (width x height), checked before decoding.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        """Validate the fields."""
        _require(bool(self.robot), 'robot', self.robot, "a robot name such as 'aloha' or a "
                 'path to a robot YAML file')
        _require(self.max_instruction_chars >= 1, 'max_instruction_chars',
                 self.max_instruction_chars, 'an integer >= 1')
        _require(len(self.prompt) <= self.max_instruction_chars, 'prompt',
                 f'{self.prompt[:40]}... ({len(self.prompt)} characters)',
                 f'at most max_instruction_chars = {self.max_instruction_chars} characters')
        _require(self.max_age > 0.0, 'max_age', self.max_age, 'a positive number of seconds')
        _require(0.0 < self.velocity_scale <= 1.0, 'velocity_scale', self.velocity_scale,
                 'a fraction in (0, 1]')
        _require(bool(self.odom_topic), 'odom_topic', self.odom_topic, 'a topic name')
        _require(self.max_image_pixels >= 1, 'max_image_pixels', self.max_image_pixels,
                 'an integer >= 1')
        _require(0 <= self.control_priority <= MAX_RT_PRIORITY, 'control_priority',
                 self.control_priority, f'an integer in [0, {MAX_RT_PRIORITY}] (0 = normal)')
