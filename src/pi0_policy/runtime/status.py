"""
Status bookkeeping of a policy run: state, counters, inference latency, control rate.

Pure Python (no rclpy). ``StatusReporter`` keeps what the node's ``~/status`` and
``/diagnostics`` report (the state and its reason, the last error, the tick / hold / failure
counters, the inference latency window and the achieved-rate meter) and builds the
``StatusSnapshot`` both messages are made from (``pi0_policy.ros.diagnostics`` turns a snapshot
into messages). Threads: the control thread counts ticks and sets the state while the reporting
callbacks read snapshots; these are plain attribute writes (the rate meter has its own lock).
"""

from collections import deque
from dataclasses import dataclass
import enum
import threading

import numpy as np
from pi0_policy.runtime.executor_base import ChunkExecutor
from pi0_policy.runtime.inputs import ObservationBuffer
from pi0_policy.runtime.safety import SafetyFilter

# Percentiles of the inference latency that are reported.
MEDIAN = 50.0
TAIL = 99.0
RATE_WINDOW = 1.0  # seconds over which the achieved control rate is measured
MS = 1000.0  # milliseconds per second


class NodeState(enum.IntEnum):
    """Finite states of a policy run, equal to pi0_msgs/PolicyStatus STATE_* (a test checks)."""

    UNCONFIGURED = 0
    INACTIVE = 1
    DISABLED = 2
    WAITING = 3
    RUNNING = 4
    HOLDING = 5
    ERROR = 6


class LatencyWindow:
    """Keep the last ``size`` latencies (seconds) and report last / median / p99."""

    def __init__(self, size: int) -> None:
        """Create an empty window of ``size`` samples."""
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        """Record one latency in seconds."""
        self._samples.append(seconds)

    @property
    def last(self) -> float:
        """Return the newest latency, 0 when empty."""
        return self._samples[-1] if self._samples else 0.0

    def percentile(self, q: float) -> float:
        """Return the q-th percentile of the window for q in 0-100, 0 when empty."""
        return float(np.percentile(self._samples, q)) if self._samples else 0.0


class RateMeter:
    """
    Count events over a sliding time window to report the achieved rate (Hz).

    Thread-safe: the control thread calls ``tick`` while the reporting callbacks call ``rate``.
    """

    def __init__(self, window: float) -> None:
        """Create a meter that averages over the last ``window`` seconds."""
        self._window = window
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        """Record one event at time ``now`` (seconds)."""
        with self._lock:
            self._times.append(now)
            while self._times and self._times[0] < now - self._window:
                self._times.popleft()

    def rate(self, now: float) -> float:
        """Return the events per second over the window ending at ``now``."""
        with self._lock:
            recent = sum(1 for t in self._times if t >= now - self._window)
        return recent / self._window


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything the status message and /diagnostics report at one instant."""

    # Current state and the reason for it (empty when nothing to explain).
    state: NodeState
    detail: str
    embodiment: str
    instruction: str
    enabled: bool
    # Inference latency in seconds: last, median, 99th percentile.
    latency_last: float
    latency_p50: float
    latency_p99: float
    # Achieved and configured control rate (Hz).
    rate_achieved: float
    rate_target: float
    # Required inputs and the age (s) of their newest message, NEVER_RECEIVED if none.
    input_names: tuple[str, ...]
    input_ages: tuple[float, ...]
    # Age (s) beyond which an input is stale.
    max_age: float
    # Executing chunk: sequence, actions taken from it, its length, its age (s).
    chunk_sequence: int
    chunk_index: int
    chunk_length: int
    chunk_age: float
    # Last rejected input, instruction or inference error ('' for none).
    last_error: str
    # Counters since activation.
    ticks: int
    hold_ticks: int
    clamped_commands: int
    inference_failures: int
    # Control ticks that raised (the loop held and kept running); /diagnostics only.
    tick_errors: int = 0
    # Stamp minus arrival (s) of each input's newest message; empty when not known.
    input_skews: tuple[float, ...] = ()

    @classmethod
    def idle(cls, state: NodeState, detail: str, *, embodiment: str = '',
             last_error: str = '') -> 'StatusSnapshot':
        """Return the status of a node with no run (unconfigured, or a failed configure)."""
        return cls(state=state, detail=detail, embodiment=embodiment, instruction='',
                   enabled=False, latency_last=0.0, latency_p50=0.0, latency_p99=0.0,
                   rate_achieved=0.0, rate_target=0.0, input_names=(), input_ages=(),
                   max_age=0.0, chunk_sequence=0, chunk_index=0, chunk_length=0, chunk_age=0.0,
                   last_error=last_error, ticks=0, hold_ticks=0, clamped_commands=0,
                   inference_failures=0)


class StatusReporter:
    """The node's state, counters, latency window and rate meter since configure."""

    def __init__(self, embodiment: str, executor: ChunkExecutor, buffer: ObservationBuffer,
                 safety: SafetyFilter, *, max_age: float, latency_window: int,
                 rate_window: float = RATE_WINDOW) -> None:
        """
        Start INACTIVE with zero counters and empty windows.

        Args:
            embodiment: Robot name reported in the status.
            executor: The chunk executor (progress and target control rate are read from it).
            buffer: The input buffer (input names and ages are read from it).
            safety: The safety filter (its clamp count is read from it).
            max_age: Age (s) beyond which an input is stale.
            latency_window: Number of inference latencies kept for the percentiles.
            rate_window: Seconds over which the achieved control rate is measured.

        """
        self._embodiment, self._executor = embodiment, executor
        self._buffer, self._safety = buffer, safety
        # Age (s) beyond which an input is stale (may be changed while running).
        self.max_age = max_age
        self.state, self.detail, self.last_error = NodeState.INACTIVE, '', ''
        self.ticks = self.hold_ticks = self.failures = self.tick_errors = 0
        self.latency = LatencyWindow(latency_window)
        self.rate = RateMeter(rate_window)

    def count_tick(self, now: float) -> None:
        """Count one control tick at time ``now`` (seconds) for the counters and rate."""
        self.rate.tick(now)
        self.ticks += 1

    def add_latency(self, milliseconds: float) -> None:
        """Record the total latency of one inference, given in milliseconds."""
        self.latency.add(milliseconds / MS)

    def set_state(self, state: NodeState, detail: str) -> bool:
        """Set the state and its reason; return whether the state changed."""
        changed = state != self.state
        self.state, self.detail = state, detail
        return changed

    def snapshot(self, now: float, *, instruction: str, enabled: bool,
                 running: bool) -> StatusSnapshot:
        """
        Return the status at time ``now`` (seconds).

        Args:
            now: Current time in seconds.
            instruction: The current instruction.
            enabled: Whether commands are enabled.
            running: Whether the control loop runs (else the achieved rate is 0).

        """
        progress = self._executor.progress
        detail = self.detail or (f'last error: {self.last_error}' if self.last_error else '')
        return StatusSnapshot(
            state=self.state, detail=detail, embodiment=self._embodiment,
            instruction=instruction, enabled=enabled, latency_last=self.latency.last,
            latency_p50=self.latency.percentile(MEDIAN),
            latency_p99=self.latency.percentile(TAIL),
            rate_achieved=self.rate.rate(now) if running else 0.0,
            rate_target=self._executor.config.control_rate_hz,
            input_names=self._buffer.names, input_ages=self._buffer.ages(now),
            input_skews=self._buffer.skews(),
            max_age=self.max_age, chunk_sequence=max(progress.sequence, 0),
            chunk_index=max(progress.index, 0), chunk_length=progress.length,
            chunk_age=progress.chunk_age or 0.0, last_error=self.last_error,
            ticks=self.ticks, hold_ticks=self.hold_ticks,
            clamped_commands=self._safety.stats.clamped, inference_failures=self.failures,
            tick_errors=self.tick_errors)
