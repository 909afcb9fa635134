"""
Report the health of the policy node: ``PolicyStatus`` and ``/diagnostics`` from a snapshot.

``diagnostic_updater`` has no wheel here; the bookkeeping (state, latency window, rate meter,
``StatusSnapshot``) is pure and lives in :mod:`pi0_policy.runtime.status`. This module only
builds ``pi0_msgs/PolicyStatus`` and ``diagnostic_msgs/DiagnosticArray``. No Node is touched.
"""

from collections.abc import Sequence

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from pi0_msgs.msg import PolicyStatus
from pi0_policy.runtime.inputs import CLOCK_SKEW_WARN_S, NEVER_RECEIVED
from pi0_policy.runtime.status import NodeState, StatusSnapshot
from pi0_policy.serving.client import BackendHealth
from std_msgs.msg import Header

# Hardware id reported in /diagnostics (the node is software, not a device).
HARDWARE_ID = 'pi0_policy'
# Digits of the values printed into diagnostic KeyValues.
_DIGITS = 4
# Diagnostic level per state: holding and waiting are warnings, an error is an error.
_LEVELS = {NodeState.HOLDING: DiagnosticStatus.WARN, NodeState.WAITING: DiagnosticStatus.WARN,
           NodeState.ERROR: DiagnosticStatus.ERROR}


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
    level = _LEVELS.get(snapshot.state, DiagnosticStatus.OK)
    if snapshot.state == NodeState.UNCONFIGURED and snapshot.last_error:
        level = DiagnosticStatus.ERROR  # a failed configure: a person has to fix the config
    summary = DiagnosticStatus(
        level=level, name=f'{node_name}: policy',
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
    skews = snapshot.input_skews or (0.0,) * len(snapshot.input_names)
    for name, age, skew in zip(snapshot.input_names, snapshot.input_ages, skews):
        never = age == NEVER_RECEIVED
        stale = never or age > snapshot.max_age
        message = ('never received' if never else
                   f'{age:.3f} s old (max_age {snapshot.max_age:.3f} s)')
        level = DiagnosticStatus.STALE if stale else DiagnosticStatus.OK
        if abs(skew) > CLOCK_SKEW_WARN_S:
            level = max(level, DiagnosticStatus.WARN)
            message += (f'; header stamp {abs(skew):.3f} s '
                        f"{'ahead of' if skew > 0 else 'behind'} the node clock at arrival "
                        '(clock skew? synchronise the clocks, e.g. with chrony)')
        status = DiagnosticStatus(level=level, name=f'{node_name}: input {name}',
                                  hardware_id=HARDWARE_ID, message=message)
        status.values = _values([('age_s', float(age)), ('stamp_skew_s', float(skew))])
        statuses.append(status)
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)


def backend_status(health: BackendHealth, node_name: str) -> DiagnosticStatus:
    """
    Build the status of a subprocess/remote policy backend: ERROR while disconnected.

    Args:
        health: The backend's connection state.
        node_name: Fully qualified node name, used as the status name prefix.

    Returns:
        One DiagnosticStatus named '<node>: policy server'.

    """
    status = DiagnosticStatus(
        level=DiagnosticStatus.OK if health.connected else DiagnosticStatus.ERROR,
        name=f'{node_name}: policy server', hardware_id=HARDWARE_ID,
        message=f'connected to {health.url}' if health.connected
        else f'disconnected from {health.url}: {health.detail}')
    status.values = _values([('url', health.url), ('connected', health.connected),
                             ('reconnects', health.reconnects),
                             ('server_restarts', health.restarts)])
    return status
