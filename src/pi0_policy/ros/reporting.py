"""
Status bookkeeping of the policy node: state, counters, inference latency, control rate.

``StatusReporter`` keeps what ``~/status`` and ``/diagnostics`` report (the node state and its
reason, the last error, the tick / hold / failure counters, the inference latency window and
the achieved-rate meter) and builds the ``StatusSnapshot`` both messages are made from. No Node
is touched. Threads: the control thread counts ticks and sets the state while the reporting
callbacks read snapshots; these are plain attribute writes (the rate meter has its own lock).
"""

from pi0_policy.ros.diagnostics import (
    LatencyWindow, MEDIAN, NodeState, RateMeter, StatusSnapshot, TAIL)
from pi0_policy.ros.observation import ObservationBuffer
from pi0_policy.runtime.chunking import ChunkExecutor
from pi0_policy.runtime.safety import SafetyFilter

RATE_WINDOW = 1.0  # seconds over which the achieved control rate is measured
MS = 1000.0  # milliseconds per second


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
        self._buffer, self._safety, self._max_age = buffer, safety, max_age
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
            max_age=self._max_age, chunk_sequence=max(progress.sequence, 0),
            chunk_index=max(progress.index, 0), chunk_length=progress.length,
            chunk_age=progress.chunk_age or 0.0, last_error=self.last_error,
            ticks=self.ticks, hold_ticks=self.hold_ticks,
            clamped_commands=self._safety.stats.clamped, inference_failures=self.failures,
            tick_errors=self.tick_errors)
