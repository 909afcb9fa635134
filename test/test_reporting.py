"""Unit tests of the node's status bookkeeping (StatusReporter) and tick logic (Controller)."""

from embodiment_adapters import load_robot_config, make_adapter
from embodiment_adapters.config import find_robot_config
from pi0_policy.ros.controller import Controller, DISABLED_DETAIL
from pi0_policy.ros.diagnostics import NodeState
from pi0_policy.ros.observation import input_specs, ObservationBuffer, required_names
from pi0_policy.ros.reporting import StatusReporter
from pi0_policy.runtime.chunking import ExecutionConfig, make_executor
from pi0_policy.runtime.safety import HoldReason, SafetyConfig, SafetyFilter
import pytest

MAX_AGE = 0.5
NOW = 100.0
ODOM_TOPIC = '/odom'


@pytest.fixture
def parts():
    adapter = make_adapter(load_robot_config(find_robot_config('mock')))
    inputs = input_specs(adapter, ODOM_TOPIC)
    buffer = ObservationBuffer([s.name for s in inputs], MAX_AGE, required_names(adapter, inputs))
    executor = make_executor(ExecutionConfig())
    safety = SafetyFilter(SafetyConfig(
        lower=adapter.lower, upper=adapter.upper, is_velocity=adapter.is_velocity,
        max_velocity=adapter.max_velocity, dt=executor.config.dt, names=adapter.action_names))
    status = StatusReporter(adapter.name, executor, buffer, safety, max_age=MAX_AGE,
                            latency_window=4)
    return adapter, inputs, buffer, executor, safety, status


def make_controller(parts, published, changes, *, enabled):
    adapter, inputs, buffer, executor, safety, status = parts
    return Controller(adapter, inputs, buffer, None, executor, safety, status, max_age=MAX_AGE,
                      instruction='pick', enabled=enabled, clock=lambda: NOW,
                      publish=published.append, publish_chunk=lambda *args: None,
                      on_state_change=lambda: changes.append(status.state))


def test_reporter_starts_inactive_and_counts(parts):
    adapter, _, buffer, executor, _, status = parts
    snap = status.snapshot(NOW, instruction='pick', enabled=True, running=False)
    assert (snap.state, snap.detail, snap.ticks, snap.hold_ticks) == (NodeState.INACTIVE, '', 0, 0)
    assert snap.embodiment == adapter.name and snap.input_names == buffer.names
    assert snap.rate_target == executor.config.control_rate_hz and snap.latency_last == 0.0
    for i in range(5):
        status.count_tick(NOW + 0.1 * i)
    status.add_latency(250.0)  # milliseconds
    snap = status.snapshot(NOW + 0.4, instruction='pick', enabled=True, running=True)
    assert snap.ticks == 5 and snap.rate_achieved == pytest.approx(5.0)
    assert snap.latency_last == pytest.approx(0.25) and snap.latency_p99 == pytest.approx(0.25)
    # The achieved rate is 0 while the control loop does not run.
    assert status.snapshot(NOW, instruction='', enabled=False, running=False).rate_achieved == 0


def test_reporter_state_change_and_error_detail(parts):
    status = parts[-1]
    assert status.set_state(NodeState.WAITING, 'x') is True
    assert status.set_state(NodeState.WAITING, 'y') is False
    status.last_error = 'instruction rejected: too long'
    assert status.snapshot(NOW, instruction='', enabled=True, running=True).detail == 'y'
    status.set_state(NodeState.RUNNING, '')
    snap = status.snapshot(NOW, instruction='', enabled=True, running=True)
    assert snap.detail == 'last error: instruction rejected: too long'


def test_disabled_tick_sends_nothing_and_reports_disabled(parts):
    published, changes = [], []
    controller = make_controller(parts, published, changes, enabled=False)
    controller.tick()
    controller.tick()
    assert published == [] and changes == [NodeState.DISABLED]  # reported once per change
    assert parts[-1].detail == DISABLED_DETAIL and parts[-1].ticks == 2


def test_enabled_tick_without_inputs_holds_and_waits(parts):
    published, changes = [], []
    controller = make_controller(parts, published, changes, enabled=True)
    controller.tick()
    status = parts[-1]
    assert published == [None]  # no command and no measured pose: zero base only
    assert changes == [NodeState.WAITING] and status.hold_ticks == 1
    assert status.detail.startswith(f'{HoldReason.STALE_INPUT.value}: ')
    assert not controller.in_flight  # stale inputs never wake the inference


def test_tick_failure_and_inference_failure_are_counted(parts):
    published, changes = [], []
    controller = make_controller(parts, published, changes, enabled=True)
    controller.tick_failed(ValueError('bad'))
    status = parts[-1]
    assert status.state == NodeState.ERROR and status.tick_errors == 1
    assert status.last_error == "control tick failed: ValueError('bad')"
    assert controller.reset_pending and published == [None]
    controller.reset_pending = False
    message = controller.inference_failed(RuntimeError('oom'))
    assert message == 'inference failed: oom' == controller.fault
    assert status.failures == 1 and controller.reset_pending
    controller.set_enabled(False)
    assert controller.enabled is False and controller.reset_pending
    assert controller.final_command() is None  # nothing was commanded
