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
import logging
import time

from embodiment_adapters import EmbodimentAdapter
import numpy as np
from pi0_policy.runtime.executor_base import ChunkExecutor
from pi0_policy.runtime.inputs import (
    assemble_observation, ImageDecoder, InputError, InputSpec, measured_command,
    ObservationBuffer)
from pi0_policy.runtime.policy import Pi0Policy, PolicyResult, TIME_TOTAL
from pi0_policy.runtime.safety import HoldReason, SafetyFilter
from pi0_policy.runtime.status import NodeState, StatusReporter

_LOG = logging.getLogger(__name__)

DISABLED_DETAIL = 'enable with the ~/enable service'
WAITING_DETAIL = 'waiting for the next chunk'


class Session:
    """Run-time state of one configured run: enable flag, instruction, plan, faults."""

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
        # commanded: a policy action was sent since the last enable/activate (holds may follow).
        self.in_flight = self.reset_pending = self.commanded = False
        self.fault: str | None = None
        self._wake: Callable[[], None] | None = None

    def activate(self, wake: Callable[[], None]) -> None:
        """Start from an empty plan; ``wake`` asks the inference thread for a chunk."""
        self.executor.reset()
        self.safety.reset()
        # A wake the previous worker never served must not block inference now.
        self.commanded = self.in_flight = self.reset_pending = False
        self.fault = None
        self._wake = wake

    def set_enabled(self, enabled: bool) -> None:
        """Enable or disable commands; the plan is dropped at the next tick."""
        # Reset first: a tick between the two writes must not execute an action planned
        # before the disable.
        self.reset_pending = True
        self.enabled = enabled

    def set_state(self, state: NodeState, detail: str) -> None:
        """Set the state and its reason; report the status when the state changed."""
        if self.status.set_state(state, detail):
            self._on_state_change()

    def measured(self, now: float) -> np.ndarray | None:
        """Return the (D,) measured command from inputs younger than max_age, or None."""
        return measured_command(self.adapter, self.inputs, self.buffer.snapshot(now))

    def tick(self) -> None:
        """Take the next action (or hold), make it safe and publish it; never infers."""
        now = self._clock()
        self.status.count_tick(now)
        if self.reset_pending:
            self.reset_pending = False
            self.executor.reset()
        if not self.enabled:
            if self.commanded:  # last command: hold position, zero base velocity
                self._publish(self.safety.hold(HoldReason.DISABLED)[0])
            self.commanded = False
            self.safety.reset()
            self.set_state(NodeState.DISABLED, DISABLED_DETAIL)
            return
        problem = self.buffer.problem(now)
        if problem is not None:
            if self.status.state == NodeState.RUNNING:
                self.executor.reset()  # the plan came from inputs that are now stale
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

    def _hold(self, reason: HoldReason, detail: str, now: float) -> None:
        """Hold the last command; before any, the fresh measured pose, else only zero base."""
        self.status.hold_ticks += 1
        measured = None if self.safety.last_command is not None else self.measured(now)
        self._publish(self.safety.hold(reason, measured)[0])
        self.set_state(NodeState.HOLDING if self.commanded else NodeState.WAITING,
                       f'{reason.value}: {detail}')

    def _waiting_detail(self) -> str:
        """Say that no action is planned and, once one ran, how long inference takes."""
        last = self.status.latency.last
        if not last:
            return WAITING_DETAIL
        # A slow policy (e.g. a remote server) shows here as holds between chunks.
        return f'{WAITING_DETAIL} (the last inference took {last * 1000.0:.0f} ms)'

    def tick_failed(self, error: Exception) -> None:
        """Hold and report ERROR after a tick raised."""
        self.status.tick_errors += 1
        self.reset_pending = True  # the plan may be half updated
        self.status.last_error = f'control tick failed: {error!r}'
        if self.enabled:
            self._publish(self.safety.hold(HoldReason.NO_ACTION)[0])
        self.set_state(NodeState.ERROR, self.status.last_error)

    def final_command(self) -> np.ndarray | None:
        """Return the (D,) last command to hold when control stops, None if nothing was sent."""
        return self.safety.hold(HoldReason.DISABLED)[0] if self.commanded else None

    def infer_once(self) -> None:
        """Assemble the observation, infer, queue the chunk and publish it (inference thread)."""
        try:
            now, instruction = self._clock(), self.instruction
            try:
                observation, obs_time = assemble_observation(
                    self.inputs, self.buffer.snapshot(), self.adapter, instruction, now=now,
                    max_age=self.max_age, decode=self._decode)
            except InputError as error:
                self.buffer.reject(error.spec.name, error.reason)
                raise
            # RTC: the current chunk's leftover, delay and execution horizon travel as extra keys.
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
            if not self.executor.add_chunk(result.actions, obs_time, self.sequence + 1):
                return  # not newer than a queued chunk: never executed, so not published
            self.sequence += 1
            self.fault = None
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
        self.status.failures += 1
        self.fault = f'inference failed: {error}'
        self.reset_pending = True
        return self.fault
