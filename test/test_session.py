"""Unit tests of the run's status bookkeeping (StatusReporter) and tick logic (Session), no ROS."""

import threading
import time

from embodiment_adapters import load_robot_config, make_adapter
from embodiment_adapters.config import find_robot_config
import numpy as np
from pi0_policy.runtime.chunking import make_executor
from pi0_policy.runtime.config import (
    ExecutionConfig, NodeConfig, PolicyLoadConfig, ReportingConfig)
from pi0_policy.runtime.inputs import (
    input_specs, InputError, InputKind, ObservationBuffer, required_names)
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.runtime.safety import HoldReason, SafetyConfig, SafetyFilter
from pi0_policy.runtime.session import (
    DISABLED_DETAIL, live_execution, safety_config, Session)
from pi0_policy.runtime.status import NodeState, StatusReporter
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
    return Session(adapter, inputs, buffer, None, executor, safety, status, max_age=MAX_AGE,
                   instruction='pick', enabled=enabled, clock=lambda: NOW, decode=None,
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
    assert controller.epoch == 1 and published == [None]  # the plan was dropped
    message = controller.inference_failed(ValueError('state has NaN'))
    assert message == 'inference failed: state has NaN' == controller.fault
    assert status.failures == 1 and controller.epoch == 2 and not controller.fatal
    controller.set_enabled(False)
    assert controller.enabled is False and controller.epoch == 3
    assert controller.stop_commands() == [None]  # nothing was commanded: zero base only


# ----- the running path with the real tiny policy -------------------------------------------
NUM_STEPS = 2  # flow-matching steps of the tiny policy (speed only)
CORRUPT = b'not an image'  # a camera payload the decoder rejects


@pytest.fixture(scope='module')
def policy():
    return Pi0Policy.from_checkpoint(None, 'mock', num_steps=NUM_STEPS)


def _decode(spec, payload):
    """Camera payloads of these tests are (H, W, 3) arrays already; bytes are corrupt."""
    if isinstance(payload, bytes):
        raise InputError(spec, 'payload does not decode')
    return payload


class Run:
    """A Session on the mock robot with a settable clock and recorded outputs."""

    def __init__(self, parts, policy, *, enabled=True):
        self.adapter, self.inputs, self.buffer, self.executor, self.safety, self.status = parts
        self.now, self.published, self.chunks, self.wakes = NOW, [], [], 0
        self.session = Session(
            self.adapter, self.inputs, self.buffer, policy, self.executor, self.safety,
            self.status, max_age=MAX_AGE, instruction='pick', enabled=enabled,
            clock=lambda: self.now, decode=_decode, publish=self.published.append,
            publish_chunk=lambda *args: self.chunks.append(args), on_state_change=lambda: None)
        self.session.activate(self._wake)
        self.positions = np.array([0.1, -0.2, 0.3, 0.02])  # mock: 3 joints + gripper

    def _wake(self):
        self.wakes += 1

    def feed(self, camera=None):
        """Put fresh joint states and a camera image stamped now."""
        names = tuple(j.name for j in self.adapter.config.joints)
        for spec in self.inputs:
            if spec.kind == InputKind.JOINT_STATES:
                self.buffer.put(spec.name, (names, self.positions.copy()), self.now)
            else:
                image = np.zeros((48, 64, 3), np.uint8) if camera is None else camera
                self.buffer.put(spec.name, image, self.now)

    def step(self, seconds=None):
        self.now += self.executor.config.dt if seconds is None else seconds
        self.feed()
        self.session.tick()

    def commanding(self):
        """Ask for a chunk, infer it and send its first command; return self."""
        self.feed()
        self.session.tick()
        self.session.infer_once()
        self.step()
        return self

    def enable_after_a_move(self):
        """Move the robot while disabled (by hand, a leader arm, a sim reset), enable again."""
        self.positions = self.positions + np.array([0.5, -0.4, 0.3, 0.0])
        self.session.set_enabled(True)
        self.step()
        # Held at the measured pose, not at the last command before the disable (that would
        # pull the robot back where it was); the old plan is gone, a new chunk is asked for.
        assert self.status.state == NodeState.WAITING and self.session.in_flight
        assert np.allclose(self.published[-1], self.positions)
        self.session.infer_once()
        self.step()
        assert self.status.state == NodeState.RUNNING
        step = np.array(self.adapter.max_velocity) * self.executor.config.dt
        assert np.all(np.abs(self.published[-1] - self.positions) <= step + 1e-9)


def test_chunk_goes_through_safety_into_the_command(parts, policy):
    run = Run(parts, policy)
    run.feed()
    run.session.tick()  # no chunk yet: hold at the measured pose, ask for an inference
    assert run.wakes == 1 and run.session.in_flight
    assert np.allclose(run.published[-1], run.positions)
    assert run.status.state == NodeState.WAITING
    run.session.infer_once()  # what the inference thread does after the wake
    assert not run.session.in_flight and len(run.chunks) == 1 and run.session.sequence == 1
    result = run.chunks[0][0]
    run.step()
    command = run.published[-1]
    assert run.status.state == NodeState.RUNNING and run.session.commanded
    step = np.array(run.adapter.max_velocity) * run.executor.config.dt
    # The first command moves from the measured pose by at most one rate-limited step, toward
    # the chunk's action, and stays within the joint limits.
    assert np.all(np.abs(command - run.positions) <= step + 1e-9)
    assert np.all(command >= run.adapter.lower) and np.all(command <= run.adapter.upper)
    # It is one of the chunk's actions made safe (the executor picks the row for the tick).
    safe = [SafetyFilter(run.safety.config).filter(row, run.positions)[0]
            for row in result.actions]
    assert any(np.allclose(command, row) for row in safe)
    assert run.status.ticks == 2 and run.status.hold_ticks == 1


def test_inference_failure_holds_the_last_command(parts, policy):
    run = Run(parts, policy).commanding()
    last = run.published[-1]
    run.feed(camera=CORRUPT)
    with pytest.raises(InputError, match='does not decode'):
        run.session.infer_once()
    message = run.session.inference_failed(InputError(run.inputs[0], 'payload does not decode'))
    assert message.startswith('inference failed') and run.status.failures == 1
    # The camera was marked invalid: the input is unusable until its next valid message.
    assert 'is invalid' in run.buffer.problem(run.now)
    run.now += run.executor.config.dt
    run.session.tick()
    assert np.array_equal(run.published[-1], last)  # hold: the last command again
    assert run.status.state == NodeState.HOLDING
    # A good image again: the plan was dropped, so the robot holds until a new chunk arrives.
    run.step()
    assert run.status.state == NodeState.HOLDING
    assert HoldReason.INFERENCE_FAILURE.value in run.status.detail
    run.session.infer_once()
    run.step()
    assert run.status.state == NodeState.RUNNING and run.session.fault is None


def test_disable_holds_once_and_enable_starts_from_a_new_chunk(parts, policy):
    run = Run(parts, policy).commanding()
    last = run.published[-1]
    run.session.set_enabled(False)
    count = len(run.published)
    run.step()
    run.step()
    assert len(run.published) == count + 1  # one final hold, then nothing
    assert np.array_equal(run.published[-1], last)
    assert run.status.state == NodeState.DISABLED and not run.session.commanded
    run.enable_after_a_move()
    assert run.session.sequence == 2


def test_an_enable_right_after_a_disable_starts_from_the_measured_pose(parts, policy):
    """No tick between disable and enable (services back to back, e.g. around a sim reset)."""
    run = Run(parts, policy).commanding()
    run.session.set_enabled(False)
    run.enable_after_a_move()


def test_an_unrecoverable_inference_failure_is_an_error(parts, policy):
    run = Run(parts, policy).commanding()
    message = run.session.inference_failed(RuntimeError('CUDA error: out of memory'))
    assert run.session.fatal and 'cannot recover from it by itself' in message
    last = run.published[-1]
    run.step()
    assert run.status.state == NodeState.ERROR and np.array_equal(run.published[-1], last)
    run.session.infer_once()  # a chunk again: the fault is over
    run.step()
    assert run.status.state == NodeState.RUNNING and not run.session.fatal


def node_config(*, max_age=MAX_AGE, velocity_scale=1.0, prompt='pick', num_steps=NUM_STEPS,
                **execution):
    """Return a NodeConfig of the mock robot (the ROS node builds it from its parameters)."""
    return NodeConfig(
        robot='mock', prompt=prompt, max_instruction_chars=2000, max_age=max_age,
        enabled_at_start=True, base_frame_id='base_link', odom_topic='/odom',
        velocity_scale=velocity_scale,
        policy=PolicyLoadConfig(checkpoint=None, device='cpu', dtype='float32',
                                num_steps=num_steps, asset_id=None, seed=0, torch_threads=1),
        execution=ExecutionConfig(**execution),
        reporting=ReportingConfig(status_rate_hz=1.0, diagnostics_rate_hz=1.0,
                                  latency_window=10, preview=False, preview_frame='base_link'))


class TogglingPolicy:
    """The real policy, with a disable and re-enable arriving while it infers."""

    def __init__(self, policy):
        self.policy, self.session = policy, None

    def infer(self, observation):
        result = self.policy.infer(observation)
        self.session.set_enabled(False)
        self.session.set_enabled(True)
        return result


def test_reenabling_never_executes_a_chunk_planned_before_the_disable(parts, policy):
    toggling = TogglingPolicy(policy)
    run = Run(parts, toggling)
    toggling.session = run.session
    run.feed()
    run.session.tick()
    run.session.infer_once()  # observed before the disable: must be dropped
    assert run.chunks == [] and run.executor.progress.sequence < 1
    run.step()
    assert run.status.state == NodeState.WAITING  # held, asked again
    assert np.allclose(run.published[-1], run.positions)
    # Ticks racing with enable/disable from another thread never execute an old plan either.
    run.session.policy = policy
    run.session.infer_once()
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            run.session.set_enabled(False)
            run.session.set_enabled(True)
    epoch = run.session.epoch
    thread = threading.Thread(target=toggle)
    thread.start()
    try:
        while run.session.epoch == epoch:  # the chunk above was planned before a disable
            time.sleep(0.001)
        for _ in range(200):
            run.step()
            assert run.status.state != NodeState.RUNNING
    finally:
        stop.set()
        thread.join()


def test_set_instruction_notes_truncation(parts, policy):
    run = Run(parts, policy)
    assert run.session.set_instruction('  pick up the cube ', 100) == ''
    assert run.session.instruction == 'pick up the cube'
    long = ' '.join(f'word{i}' for i in range(60))
    note = run.session.set_instruction(long, 10_000)
    assert 'truncated' in note and 'first 48' in note and run.session.instruction == long
    with pytest.raises(ValueError, match='is empty'):
        run.session.set_instruction('   ', 100)
    assert run.session.instruction == long


def test_live_settings_apply_to_the_running_session(parts, policy):
    run = Run(parts, policy)
    config = node_config()
    faster = node_config(max_age=0.05, velocity_scale=0.5, prompt='place', request_remaining=7,
                         num_steps=3)
    run.session.check_config(faster, config)
    assert run.session.apply_config(faster, config) == ''
    assert run.buffer.max_age == 0.05 and run.status.max_age == 0.05
    assert run.safety.config.max_velocity == pytest.approx(
        tuple(np.array(run.adapter.max_velocity) * 0.5))
    assert run.executor.config.request_remaining == 7 and policy.num_steps == 3
    assert run.session.instruction == 'place'
    policy.num_steps = NUM_STEPS
    # A tunable that does not fit the running executor is refused before anything changes.
    horizon = policy.action_horizon
    running = ExecutionConfig(strategy='sync', horizon=horizon, execute_steps=horizon)
    with pytest.raises(ValueError, match='exceeds'):
        live_execution(running, ExecutionConfig(execute_steps=horizon + 1))
    with pytest.raises(ValueError, match='is empty'):
        run.session.check_config(node_config(prompt=' '), config)


def test_a_stop_ramps_the_base_down_within_its_acceleration():
    adapter = make_adapter(load_robot_config(find_robot_config('mobile_manipulator')))
    dt = 0.02
    safety = SafetyFilter(safety_config(adapter, 1.0, dt))
    velocity = np.flatnonzero(adapter.is_velocity)
    accel = adapter.max_acceleration[velocity]
    assert np.all(np.isfinite(accel))
    start = np.zeros(adapter.dof)
    target = start.copy()
    target[velocity] = adapter.max_velocity[velocity]
    commands = [safety.filter(target, start)[0] for _ in range(100)]
    steps = np.diff(np.array([start] + commands)[:, velocity], axis=0)
    assert np.all(steps <= accel * dt + 1e-9)  # speeding up within the limit
    assert np.allclose(commands[-1][velocity], adapter.max_velocity[velocity])
    held = [safety.hold(HoldReason.NO_ACTION)[0] for _ in range(100)]
    slowing = np.diff(np.array([commands[-1]] + held)[:, velocity], axis=0)
    assert np.all(-slowing <= accel * dt + 1e-9)  # slowing down within the limit too
    assert np.all(held[-1][velocity] == 0.0) and safety.stopped
