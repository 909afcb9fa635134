"""
The tick / hold / enable state machine of a policy run, without ROS.

``Session`` decides each control tick (take the next action of the chunk executor, or hold;
make it safe; ask for the next inference) and runs each inference (assemble the observation,
infer, queue the chunk). It never infers on the control thread. The caller (the ROS node, or a
test) owns the threads and the lock that keeps a tick from racing with stopping the loop, and
passes in how a command and a chunk are published, how camera payloads are decoded and how a
state change is reported. Pure Python (no rclpy).
"""

from collections.abc import Callable
from dataclasses import replace
import logging
import threading
import time

from embodiment_adapters import EmbodimentAdapter
import numpy as np
from pi0_policy.runtime.chunking import make_executor
from pi0_policy.runtime.config import ExecutionConfig, NodeConfig
from pi0_policy.runtime.executor_base import ChunkExecutor
from pi0_policy.runtime.inputs import (
    assemble_observation, ImageDecoder, InputError, InputSpec, measured_command,
    ObservationBuffer, required_names)
from pi0_policy.runtime.policy import Pi0Policy, PolicyResult, TIME_TOTAL
from pi0_policy.runtime.safety import HoldReason, SafetyConfig, SafetyFilter
from pi0_policy.runtime.start_pose import plan_start_move, StartMover
from pi0_policy.runtime.status import NodeState, StatusReporter

_LOG = logging.getLogger(__name__)

DISABLED_DETAIL = 'enable with the ~/enable service'
WAITING_DETAIL = 'waiting for the next chunk'
# Inference errors the robot recovers from by itself (new sensor data; a policy server that the
# client reconnects to): the run holds (WARN). Any other error (model, device, out of memory)
# needs a person: the run holds in ERROR.
RECOVERABLE_ERRORS = (InputError, ValueError, ConnectionError, TimeoutError)
# Settings of the in-process policy that apply from its next inference (attributes of Pi0Policy).
POLICY_LIVE_FIELDS = ('num_steps', 'rtc_schedule', 'rtc_max_guidance_weight')
# Most hold ticks a stop ramps the base down for before the final zero command.
MAX_STOP_TICKS = 500


def clean_instruction(text: str, max_chars: int) -> str:
    """
    Return a language instruction with surrounding whitespace removed, after checks.

    Args:
        text: The instruction as received.
        max_chars: Longest instruction accepted (characters).

    Raises:
        ValueError: The instruction is empty or longer than ``max_chars``.

    """
    cleaned = text.strip()
    if not cleaned:
        raise ValueError(f'Instruction {text!r} is empty; expected a task description such as '
                         '"pick up the cube". The previous instruction stays in effect.')
    if len(cleaned) > max_chars:
        raise ValueError(f'Instruction has {len(cleaned)} characters; expected at most '
                         f'{max_chars} (max_instruction_chars). Send a shorter instruction; the '
                         'previous one stays in effect.')
    return cleaned


def safety_config(adapter: EmbodimentAdapter, velocity_scale: float, dt: float) -> SafetyConfig:
    """Return the limits of the robot's commands, speeds scaled by ``velocity_scale``."""
    return SafetyConfig(lower=adapter.lower, upper=adapter.upper, is_velocity=adapter.is_velocity,
                        max_velocity=adapter.max_velocity * velocity_scale, dt=dt,
                        max_acceleration=adapter.max_acceleration, names=adapter.action_names)


def live_execution(running: ExecutionConfig, wanted: ExecutionConfig) -> ExecutionConfig:
    """
    Return the running execution config with the tunables of ``wanted`` (validated).

    Raises:
        ValueError: The tunables do not fit the running executor (e.g. execute_steps > horizon).

    """
    return replace(running, execute_steps=wanted.execute_steps,
                   request_remaining=wanted.request_remaining,
                   ensemble_coefficient=wanted.ensemble_coefficient,
                   max_chunk_age=wanted.max_chunk_age)


class Session:
    """
    Run-time state of one configured run: enable flag, instruction, plan, faults.

    Threads: ``tick`` (control thread), ``set_enabled`` / ``set_instruction`` (service threads)
    and the end of ``infer_once`` (inference thread) run under one lock, so a re-enable can never
    execute an action planned before the disable: enabling and disabling bump ``epoch`` and drop
    the plan at once, and a chunk whose observation was taken in an earlier epoch is discarded.
    """

    def __init__(self, adapter: EmbodimentAdapter, inputs: tuple[InputSpec, ...],
                 buffer: ObservationBuffer, policy: Pi0Policy, executor: ChunkExecutor,
                 safety: SafetyFilter, status: StatusReporter, *, max_age: float,
                 instruction: str, enabled: bool, clock: Callable[[], float],
                 decode: ImageDecoder, publish: Callable[[np.ndarray | None], None],
                 publish_chunk: Callable[[PolicyResult, float, str, int], None],
                 on_state_change: Callable[[], None], inference_delay_s: float = 0.0) -> None:
        """
        Wrap the configured parts; nothing runs until ``tick`` / ``infer_once`` are called.

        Args:
            adapter: The robot's adapter.
            inputs: The node's inputs.
            buffer: Newest message per input.
            policy: The warmed-up policy (used on the inference thread only).
            executor: Chunk executor (queue of planned actions).
            safety: Safety filter of every command.
            status: Status bookkeeping.
            max_age: Age (s) beyond which an input is stale.
            instruction: Instruction at start.
            enabled: Whether commands flow at start.
            clock: Returns the node's time in seconds.
            decode: Decodes a stored camera payload (inference thread).
            publish: Sends a (D,) command in robot units; None sends only a zero base twist.
            publish_chunk: Publishes (result, observation time, instruction, sequence).
            on_state_change: Called after the state changed (publishes the status).
            inference_delay_s: Seconds added to every inference (benchmarking chunk
                strategies under latency; 0 in normal runs).

        """
        self.adapter, self.inputs, self.buffer, self.policy = adapter, inputs, buffer, policy
        self.executor, self.safety, self.status, self.max_age = executor, safety, status, max_age
        self.instruction, self.enabled = instruction, enabled
        self._clock, self._decode = clock, decode
        self._publish, self._publish_chunk = publish, publish_chunk
        self._on_state_change = on_state_change
        self.inference_delay_s = inference_delay_s
        # RTC: whether a policy that ignored the guidance keys was reported (warned once).
        self._rtc_unsupported_reported = False
        # RTC: the last reported breach of d <= s <= H - d (logged when it changes).
        self._rtc_problem: str | None = None
        self.sequence = 0
        # Bumped by every enable/disable/activate: chunks observed in an older epoch are dropped.
        self.epoch = 0
        # commanded: a policy action was sent since the last enable/activate (holds may follow).
        self.in_flight = self.commanded = False
        self.fault: str | None = None
        # Whether the fault needs a person (ERROR) rather than new sensor data (HOLDING).
        self.fatal = False
        self._wake: Callable[[], None] | None = None
        self._lock = threading.RLock()
        # The move to the start pose in progress (runs while the policy is disabled), or None.
        self.motion: StartMover | None = None

    def activate(self, wake: Callable[[], None]) -> None:
        """Start from an empty plan; ``wake`` asks the inference thread for a chunk."""
        with self._lock:
            self._drop_plan()
            self.safety.reset()
            # A wake the previous worker never served must not block inference now.
            self.commanded = self.in_flight = self.fatal = False
            self.fault = None
            self._wake = wake

    def set_enabled(self, enabled: bool) -> None:
        """
        Enable or disable commands; the plan (and any chunk being inferred) is dropped.

        Enabling a disabled node re-anchors the safety filter on the measured positions: the
        robot may have been moved while disabled (by hand, a teleoperation leader, a sim reset),
        and the holds before the first chunk and that chunk's first rate-limited step must start
        from where it is, not from the last command before the disable.
        """
        with self._lock:
            self._drop_plan()
            self.motion = None  # any enable request stops a move to the start pose
            if enabled and not self.enabled:
                self.safety.reset()
                self.commanded = False
            self.enabled = enabled

    def start_move(self, velocity_scale: float | None = None) -> str:
        """
        Plan the move to the robot's start pose from the fresh measured positions.

        The control ticks then play it, one command per tick through the safety filter, while
        the policy stays disabled; ``set_enabled`` stops it.

        Args:
            velocity_scale: Fraction of each joint's max_velocity the move may reach; None uses
                the safety filter's current limits (the node's velocity_scale).

        Returns:
            A description of the planned move.

        Raises:
            RuntimeError: The policy is enabled, or there are no fresh joint positions.
            ValueError: The robot config has no start_pose.

        """
        with self._lock:
            if self.enabled:
                raise RuntimeError('The policy is enabled; disable it (~/enable false) before '
                                   'moving to the start pose.')
            measured = self.measured(self._clock())
            if measured is None:
                raise RuntimeError('No fresh joint positions (older than max_age or missing); '
                                   'the move to the start pose starts from the measured pose.')
            if velocity_scale is None:
                limits = np.asarray(self.safety.config.max_velocity) / self.adapter.max_velocity
                velocity_scale = float(min(1.0, np.min(limits[~self.adapter.is_velocity])))
            move = plan_start_move(self.adapter, measured, dt=self.executor.config.dt,
                                   velocity_scale=velocity_scale)
            self.motion = StartMover(move)
            return (f'moving to the start pose: {len(move.commands)} commands, '
                    f'{move.duration_s:.2f} s')

    def _tick_motion(self, motion: StartMover, now: float) -> bool:
        """Send the next command of the start-pose move (lock held); False once complete."""
        measured = self.measured(now)
        if measured is None:  # the move needs live joint states: stop and hold
            self.motion = None
            self._publish(self.safety.hold(HoldReason.STALE_INPUT)[0])
            self.set_state(NodeState.HOLDING, 'start pose move stopped: no fresh joint '
                           'positions')
            return True
        command = motion.next_command()
        if command is None:
            self.motion = None
            return False
        first = self.safety.last_command is None
        safe, _ = self.safety.filter(command, measured if first else None)
        self._publish(safe)
        self.commanded = True
        self.set_state(NodeState.RUNNING, f'moving to the start pose ({motion.progress})')
        return True

    def set_max_age(self, max_age: float) -> None:
        """Change the age (s) beyond which an input is stale, from the next tick on."""
        with self._lock:
            self.max_age = max_age
            self.buffer.max_age = max_age
            self.status.max_age = max_age

    def set_instruction(self, text: str, max_chars: int) -> str:
        """
        Use a new instruction from the next inference on; return a note ('' when none).

        The note tells when the model reads only the first tokens of a long instruction.

        Raises:
            ValueError: The instruction is empty or longer than ``max_chars`` characters.

        """
        cleaned = clean_instruction(text, max_chars)
        note = ''
        tokenizer = getattr(getattr(self.policy, 'pipeline', None), 'tokenizer', None)
        if tokenizer is not None:
            tokens = tokenizer(cleaned)
            if tokens.truncated:
                note = (f'accepted, but truncated: the instruction has {tokens.num_tokens} '
                        f'tokens and the model reads the first {tokenizer.max_len}')
        self.instruction = cleaned
        return note

    def check_config(self, config: NodeConfig, previous: NodeConfig) -> None:
        """
        Check that the live settings of ``config`` can be applied to this run.

        Raises:
            ValueError: One cannot (the message names the value and the limit).

        """
        live_execution(self.executor.config, config.execution)
        for name in POLICY_LIVE_FIELDS:
            value = getattr(config.policy, name)
            if value != getattr(previous.policy, name) and not hasattr(self.policy, name):
                raise ValueError(f"Parameter '{name}' with the value {value!r} cannot apply: "
                                 f'the policy runs in a {config.policy.backend} server, which '
                                 'owns it. Set it where the server is started.')
        if config.prompt != previous.prompt:
            clean_instruction(config.prompt, config.max_instruction_chars)

    def apply_config(self, config: NodeConfig, previous: NodeConfig) -> str:
        """
        Apply the live settings of ``config`` (checked by ``check_config``) from the next tick on.

        Returns:
            A note about a new prompt ('' when none), as ``set_instruction``.

        """
        with self._lock:
            self.set_max_age(config.max_age)
            self.safety.update(safety_config(self.adapter, config.velocity_scale,
                                             self.safety.config.dt))
            self.executor.update_config(live_execution(self.executor.config, config.execution))
            for name in POLICY_LIVE_FIELDS:  # in-process only; a server owns its own
                if hasattr(self.policy, name):
                    setattr(self.policy, name, getattr(config.policy, name))
            self.inference_delay_s = config.policy.inference_delay_s
            if config.prompt != previous.prompt:
                return self.set_instruction(config.prompt, config.max_instruction_chars)
        return ''

    def _drop_plan(self) -> None:
        """Forget every planned action and any chunk still being inferred (lock held)."""
        self.epoch += 1
        self.executor.reset()

    def set_state(self, state: NodeState, detail: str) -> None:
        """Set the state and its reason; report the status when the state changed."""
        if self.status.set_state(state, detail):
            self._on_state_change()

    def measured(self, now: float) -> np.ndarray | None:
        """Return the (D,) measured command from inputs younger than max_age, or None."""
        return measured_command(self.adapter, self.inputs, self.buffer.snapshot(now))

    def tick(self) -> None:
        """Take the next action (or hold), make it safe and publish it; never infers."""
        with self._lock:
            now = self._clock()
            self.status.count_tick(now)
            motion = self.motion
            if motion is not None and not self.enabled and self._tick_motion(motion, now):
                return
            if not self.enabled:
                return self._disabled_tick()
            problem = self.buffer.problem(now)
            if problem is not None:
                if self.status.state == NodeState.RUNNING:
                    self._drop_plan()  # the plan came from inputs that are now stale
                return self._hold(HoldReason.STALE_INPUT, problem, now)
            action = self.executor.next_action(now)
            if not self.in_flight and self.executor.needs_inference(now):
                self.in_flight = True
                self._wake()
            if action is None:
                reason = HoldReason.INFERENCE_FAILURE if self.fault else HoldReason.NO_ACTION
                return self._hold(reason, self.fault or self._waiting_detail(), now)
            measured = None  # the first command starts from the fresh measured positions
            if self.safety.last_command is None:
                measured = self.measured(now)
                if measured is None:
                    return self._hold(HoldReason.NO_ACTION, 'no fresh joint positions yet', now)
            command, report = self.safety.filter(action, measured)
            self._publish(command)
            self.commanded = True
            self.set_state(NodeState.RUNNING, report.describe(self.safety.config)
                           if report.clamped else '')

    def _waiting_detail(self) -> str:
        """Say that no action is planned and, once one ran, how long inference takes."""
        last = self.status.latency.last
        if not last:
            return WAITING_DETAIL
        # A slow policy (e.g. a remote server) shows here as holds between chunks.
        return f'{WAITING_DETAIL} (the last inference took {last * 1000.0:.0f} ms)'

    def _disabled_tick(self) -> None:
        """Hold after a disable until the base has ramped to rest, then send nothing."""
        if self.commanded:  # hold position; the base slows down within its acceleration
            self._publish(self.safety.hold(HoldReason.DISABLED)[0])
            self.commanded = not self.safety.stopped
        if not self.commanded:
            self.safety.reset()
        self.set_state(NodeState.DISABLED, DISABLED_DETAIL)

    def _hold(self, reason: HoldReason, detail: str, now: float) -> None:
        """Hold the last command; before any, the fresh measured pose, else only zero base."""
        self.status.hold_ticks += 1
        measured = None if self.safety.last_command is not None else self.measured(now)
        self._publish(self.safety.hold(reason, measured)[0])
        state = NodeState.HOLDING if self.commanded else NodeState.WAITING
        if reason == HoldReason.INFERENCE_FAILURE and self.fatal:
            state = NodeState.ERROR
        self.set_state(state, f'{reason.value}: {detail}')

    def tick_failed(self, error: Exception) -> None:
        """Hold and report ERROR after a tick raised."""
        with self._lock:
            self.status.tick_errors += 1
            self._drop_plan()  # the plan may be half updated
            self.status.last_error = f'control tick failed: {error!r}'
            if self.enabled:
                self._publish(self.safety.hold(HoldReason.NO_ACTION)[0])
            self.set_state(NodeState.ERROR, self.status.last_error)

    def stop_commands(self, max_ticks: int = MAX_STOP_TICKS) -> list[np.ndarray | None]:
        """
        Return the commands that stop the robot when control ends, one per control tick.

        A run that commanded holds its last positions while the base ramps down within its
        acceleration limit (at most ``max_ticks`` ticks), then sends a zero base velocity; one
        that never commanded sends only a zero base velocity (None). Afterwards nothing was
        commanded.
        """
        with self._lock:
            if not self.commanded:
                return [None]
            commands = []
            while not self.safety.stopped and len(commands) < max_ticks:
                commands.append(self.safety.hold(HoldReason.DISABLED)[0])
            commands.append(self.safety.stop(HoldReason.DISABLED)[0])
            self.commanded = False
            return commands

    def infer_once(self) -> None:
        """Assemble the observation, infer, queue the chunk and publish it (inference thread)."""
        try:
            with self._lock:
                now, instruction, epoch = self._clock(), self.instruction, self.epoch
            try:
                observation, obs_time = assemble_observation(
                    self.inputs, self.buffer.snapshot(), self.adapter, instruction, now=now,
                    max_age=self.max_age, decode=self._decode)
            except InputError as error:
                self.buffer.reject(error.spec.name, error.reason)
                raise
            # RTC: the current chunk's leftover, delay and execution horizon travel as extra keys.
            with self._lock:
                extras = self.executor.request_extras(obs_time)
            result = self.policy.infer({**observation, **extras} if extras else observation)
            if self.inference_delay_s > 0:
                time.sleep(self.inference_delay_s)
            if extras and getattr(result, 'rtc_delay', None) is None:
                self._report_rtc_unsupported()
            delay_problem = getattr(self.executor, 'delay_problem', None)
            if delay_problem is not None:
                problem = delay_problem(len(result.actions))
                if problem is not None and problem != self._rtc_problem:
                    _LOG.warning(problem)
                self._rtc_problem = problem
            with self._lock:
                if epoch != self.epoch:  # enabled/disabled meanwhile: planned for another run
                    return
                if not self.executor.add_chunk(result.actions, obs_time, self.sequence + 1):
                    return  # not newer than a queued chunk: never executed, so not published
                self.sequence += 1
                self.fault, self.fatal = None, False
            self.status.add_latency(result.timing[TIME_TOTAL])
            self._publish_chunk(result, obs_time, instruction, self.sequence)
        finally:
            self.in_flight = False

    def _report_rtc_unsupported(self) -> None:
        """Warn once that the policy answered without RTC guidance (runs as async then)."""
        if not self._rtc_unsupported_reported:
            self._rtc_unsupported_reported = True
            _LOG.warning('strategy rtc: the policy answered without RTC guidance (a server or '
                         'policy that does not know the rtc_* request keys); chunks are executed '
                         'as with the async strategy.')

    def inference_failed(self, error: Exception) -> str:
        """Count a failed inference, drop the plan; return the message to report."""
        with self._lock:
            self.status.failures += 1
            self.fatal = not isinstance(error, RECOVERABLE_ERRORS)
            needs = ' (needs attention: the robot cannot recover from it by itself)'
            self.fault = f'inference failed: {error}' + (needs if self.fatal else '')
            self._drop_plan()
            return self.fault


def build_session(config: NodeConfig, adapter: EmbodimentAdapter, inputs: tuple[InputSpec, ...],
                  policy: Pi0Policy, *, clock: Callable[[], float], decode: ImageDecoder,
                  publish: Callable[[np.ndarray | None], None],
                  publish_chunk: Callable[[PolicyResult, float, str, int], None],
                  on_state_change: Callable[[], None]) -> Session:
    """
    Assemble a Session from a frozen config: executor, safety filter, input buffer, status.

    The control ticks run at the config's control rate; the chunk's actions are spaced at the
    rate of the robot's data (its config), which the executor interpolates. The other arguments
    are those of ``Session``.

    Raises:
        ValueError: The execution settings do not fit the policy (e.g. execute_steps > horizon).

    """
    execution = replace(config.execution, horizon=policy.action_horizon,
                        chunk_rate_hz=adapter.config.control_rate_hz)
    executor = make_executor(execution)
    safety = SafetyFilter(safety_config(adapter, config.velocity_scale, execution.dt))
    buffer = ObservationBuffer([s.name for s in inputs], config.max_age,
                               required_names(adapter, inputs))
    status = StatusReporter(adapter.name, executor, buffer, safety, max_age=config.max_age,
                            latency_window=config.reporting.latency_window)
    return Session(adapter, inputs, buffer, policy, executor, safety, status,
                   max_age=config.max_age, instruction=config.prompt,
                   enabled=config.enabled_at_start, clock=clock, decode=decode, publish=publish,
                   publish_chunk=publish_chunk, on_state_change=on_state_change,
                   inference_delay_s=config.policy.inference_delay_s)
