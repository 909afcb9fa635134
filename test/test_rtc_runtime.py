"""RTC through the policy facade: leftover in robot units -> model space -> guided chunk."""

from pi0_policy.runtime import chunking
from pi0_policy.runtime.chunking import ExecutionConfig, make_executor
from pi0_policy.runtime.inputs import input_specs, ObservationBuffer, required_names
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.runtime.safety import SafetyConfig, SafetyFilter
from pi0_policy.runtime.status import StatusReporter
import pytest
from test_session import MAX_AGE, Run
import torch

torch.set_num_threads(1)

# Round trip of robot actions through model space (float32 storage).
ROUND_TRIP_ATOL = 1e-4
NUM_STEPS = 3


@pytest.fixture(scope='module')
def policy():
    """Return the tiny random policy of the mock robot."""
    return Pi0Policy.from_checkpoint(None, 'mock', num_steps=NUM_STEPS)


def test_leftover_round_trips_through_model_space(policy):
    """to_model_actions inverts finish: robot -> model -> robot gives the same actions."""
    observation = policy.example_observation()
    first = policy.infer(observation)
    inputs = policy.pipeline.prepare(observation)
    model_actions = policy.pipeline.to_model_actions(first.actions, inputs)
    assert model_actions.shape == (policy.action_horizon, policy.config.action_dim)
    _, robot = policy.pipeline.finish(model_actions, inputs)
    assert abs(robot - first.actions).max() < ROUND_TRIP_ATOL


def test_executor_request_guides_the_next_chunk(policy):
    """An rtc executor's request makes the policy guide; its first d actions follow the plan."""
    horizon = policy.action_horizon
    executor = make_executor(ExecutionConfig(strategy='rtc', execute_steps=20, horizon=horizon,
                                             latency_skip_first=0))
    observation = policy.example_observation()
    first = policy.infer(observation)
    assert first.rtc_delay is None
    executor.add_chunk(first.actions, 0.0, 1)
    for k in range(4, 20):  # delay 4 ticks at 50 Hz
        executor.next_action(k / 50.0)
    extras = executor.request_extras(20 / 50.0)
    assert extras[chunking.RTC_DELAY_KEY] == 4
    guided = policy.infer({**observation, **extras})
    plain = policy.infer(observation)
    assert guided.rtc_delay == 4
    target = first.actions[20:24]
    assert abs(guided.actions[:4] - target).mean() < abs(plain.actions[:4] - target).mean()


def test_bad_leftover_is_rejected_with_the_expected_shape(policy):
    """A leftover of the wrong width or a negative delay is a ValueError naming the shape."""
    observation = policy.example_observation()
    with pytest.raises(ValueError, match=r"'rtc_leftover'\] must be finite \(R, "):
        policy.infer({**observation, chunking.RTC_LEFTOVER_KEY: [[0.0]]})
    leftover = policy.infer(observation).actions[10:]
    with pytest.raises(ValueError, match="'rtc_delay'] must be a non-negative"):
        policy.infer({**observation, chunking.RTC_LEFTOVER_KEY: leftover,
                      chunking.RTC_DELAY_KEY: -1})


def test_session_hands_the_leftover_to_the_policy(policy):
    """A Session with the rtc executor sends the leftover; the second chunk comes back guided."""
    adapter = policy.adapter
    inputs = input_specs(adapter, '/odom')
    buffer = ObservationBuffer([s.name for s in inputs], MAX_AGE, required_names(adapter, inputs))
    executor = make_executor(ExecutionConfig(strategy='rtc', execute_steps=10,
                                             horizon=policy.action_horizon, latency_skip_first=0))
    safety = SafetyFilter(SafetyConfig(
        lower=adapter.lower, upper=adapter.upper, is_velocity=adapter.is_velocity,
        max_velocity=adapter.max_velocity, dt=executor.config.dt, names=adapter.action_names))
    status = StatusReporter(adapter.name, executor, buffer, safety, max_age=MAX_AGE,
                            latency_window=4)
    run = Run((adapter, inputs, buffer, executor, safety, status), policy)
    run.feed()
    run.session.tick()
    run.session.infer_once()
    assert run.chunks[-1][0].rtc_delay is None  # nothing to continue yet
    for _ in range(12):
        run.step()
    assert executor.needs_inference(run.now)
    run.session.infer_once()
    assert run.session.sequence == 2 and run.chunks[-1][0].rtc_delay is not None
