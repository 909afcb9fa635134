"""
Measure and report the health of the policy node: latency, control rate, input ages, state.

``diagnostic_updater`` has no wheel here, so this module holds the small pieces the node needs:
a latency window, a rate meter, the node state enum, an immutable status snapshot, and builders
for ``pi0_msgs/PolicyStatus`` and ``diagnostic_msgs/DiagnosticArray``. No Node is touched.
"""

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
import enum
import threading

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from pi0_msgs.msg import PolicyStatus
from pi0_policy.ros.observation import NEVER_RECEIVED
from std_msgs.msg import Header

MEDIAN = 50.0
TAIL = 99.0
# Hardware id reported in /diagnostics (the node is software, not a device).
HARDWARE_ID = 'pi0_policy'
# Digits of the values printed into diagnostic KeyValues.
_DIGITS = 4


class NodeState(enum.IntEnum):
    """Finite states of the node, equal to the PolicyStatus STATE_* constants."""

    UNCONFIGURED = PolicyStatus.STATE_UNCONFIGURED
    INACTIVE = PolicyStatus.STATE_INACTIVE
    DISABLED = PolicyStatus.STATE_DISABLED
    WAITING = PolicyStatus.STATE_WAITING
    RUNNING = PolicyStatus.STATE_RUNNING
    HOLDING = PolicyStatus.STATE_HOLDING
    ERROR = PolicyStatus.STATE_ERROR


# Diagnostic level per state: holding and waiting are warnings, an error is an error.
_LEVELS = {NodeState.HOLDING: DiagnosticStatus.WARN, NodeState.WAITING: DiagnosticStatus.WARN,
           NodeState.ERROR: DiagnosticStatus.ERROR}


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


def policy_status(snapshot: StatusSnapshot, stamp: Time) -> PolicyStatus:
    """Build a ``pi0_msgs/PolicyStatus`` from a snapshot."""
    msg = PolicyStatus(
        header=Header(stamp=stamp), state=int(snapshot.state), state_name=snapshot.state.name,
        detail=snapshot.detail, embodiment=snapshot.embodiment, instruction=snapshot.instruction,
        enabled=snapshot.enabled, inference_latency_last=snapshot.latency_last,
        inference_latency_p50=snapshot.latency_p50, inference_latency_p99=snapshot.latency_p99,
        control_rate_achieved=snapshot.rate_achieved, control_rate_target=snapshot.rate_target,
        input_names=list(snapshot.input_names), chunk_sequence=snapshot.chunk_sequence,
        chunk_index=snapshot.chunk_index, chunk_length=snapshot.chunk_length,
        chunk_age=snapshot.chunk_age, ticks=snapshot.ticks, hold_ticks=snapshot.hold_ticks,
        clamped_commands=snapshot.clamped_commands,
        inference_failures=snapshot.inference_failures)
    msg.input_ages = [float(age) for age in snapshot.input_ages]
    return msg


def _values(pairs: Sequence[tuple[str, object]]) -> list[KeyValue]:
    """Format (key, value) pairs as KeyValues, rounding floats."""
    return [KeyValue(key=key, value=str(round(value, _DIGITS) if isinstance(value, float)
                                        else value)) for key, value in pairs]


def diagnostic_array(snapshot: StatusSnapshot, stamp: Time, node_name: str) -> DiagnosticArray:
    """
    Build the ``/diagnostics`` message: one status for the policy, one per input.

    Args:
        snapshot: The node status.
        stamp: Header stamp.
        node_name: Fully qualified node name, used as the status name prefix.

    Returns:
        A DiagnosticArray whose first status summarises the node (level from its state) and
        whose further statuses report each input (STALE if never received or too old).

    """
    summary = DiagnosticStatus(
        level=_LEVELS.get(snapshot.state, DiagnosticStatus.OK), name=f'{node_name}: policy',
        message=f'{snapshot.state.name}: {snapshot.detail}' if snapshot.detail
        else snapshot.state.name, hardware_id=HARDWARE_ID)
    summary.values = _values([
        ('state', snapshot.state.name), ('embodiment', snapshot.embodiment),
        ('enabled', snapshot.enabled), ('instruction', snapshot.instruction),
        ('inference_latency_last_s', snapshot.latency_last),
        ('inference_latency_p50_s', snapshot.latency_p50),
        ('inference_latency_p99_s', snapshot.latency_p99),
        ('control_rate_achieved_hz', snapshot.rate_achieved),
        ('control_rate_target_hz', snapshot.rate_target),
        ('chunk_sequence', snapshot.chunk_sequence), ('chunk_index', snapshot.chunk_index),
        ('chunk_length', snapshot.chunk_length), ('chunk_age_s', snapshot.chunk_age),
        ('ticks', snapshot.ticks), ('hold_ticks', snapshot.hold_ticks),
        ('clamped_commands', snapshot.clamped_commands),
        ('inference_failures', snapshot.inference_failures),
        ('tick_errors', snapshot.tick_errors),
        ('last_error', snapshot.last_error)])
    statuses = [summary]
    for name, age in zip(snapshot.input_names, snapshot.input_ages):
        never = age == NEVER_RECEIVED
        stale = never or age > snapshot.max_age
        status = DiagnosticStatus(
            level=DiagnosticStatus.STALE if stale else DiagnosticStatus.OK,
            name=f'{node_name}: input {name}', hardware_id=HARDWARE_ID,
            message='never received' if never else
            f'{age:.3f} s old (max_age {snapshot.max_age:.3f} s)')
        status.values = _values([('age_s', float(age))])
        statuses.append(status)
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)
