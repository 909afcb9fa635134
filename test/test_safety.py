"""Tests of the safety filter: limits, rate limit, holds, base velocities, never NaN/Inf."""

import math

import numpy as np
from pi0_policy.runtime.safety import HoldReason, SafetyConfig, SafetyFilter
import pytest

DT = 0.02  # seconds, 50 Hz
NAMES = ('shoulder', 'elbow', 'base_x', 'base_yaw')
LOWER = (-1.0, 0.0, -0.5, -1.0)  # rad, rad, m/s, rad/s
UPPER = (1.0, 2.0, 0.5, 1.0)
MAX_VELOCITY = (1.0, 2.0, 0.3, 0.8)  # rad/s for joints; |v| limit for base dims
IS_VELOCITY = (False, False, True, True)


def make_config(**overrides) -> SafetyConfig:
    """Return a two-joint, two-base-dim config with ``overrides`` applied."""
    fields = {'lower': LOWER, 'upper': UPPER, 'max_velocity': MAX_VELOCITY,
              'is_velocity': IS_VELOCITY, 'dt': DT, 'names': NAMES}
    fields.update(overrides)
    return SafetyConfig(**fields)


MEASURED = np.array([0.5, 1.0, 0.0, 0.0])


def test_config_accepts_arrays_and_stores_tuples():
    config = make_config(lower=np.array(LOWER), is_velocity=np.array(IS_VELOCITY))
    assert config.lower == LOWER and config.is_velocity == IS_VELOCITY
    assert config.label(2) == 'base_x'
    assert make_config(names=()).label(2) == 'dim 2'


@pytest.mark.parametrize('overrides, pattern', [
    ({'upper': (1.0, 2.0, 0.5)}, r'upper has 3 entries but lower has 4'),
    ({'is_velocity': (False,)}, r'is_velocity has 1 entries but lower has 4'),
    ({'names': ('a', 'b')}, r'names has 2 entries but lower has 4'),
    ({'max_acceleration': (1.0,)}, r'max_acceleration has 1 entries but lower has 4'),
    ({'lower': (2.0, 0.0, -0.5, -1.0)}, r'limits of shoulder: lower=2.0 and upper=1.0'),
    ({'lower': (math.nan, 0.0, -0.5, -1.0)}, r'limits of shoulder: lower=nan'),
    ({'max_velocity': (1.0, 0.0, 0.3, 0.8)}, r'max_velocity of elbow is 0.0; expected a finite'),
    ({'max_velocity': (1.0, math.inf, 0.3, 0.8)}, r'max_velocity of elbow is inf'),
    ({'max_acceleration': (1.0, 1.0, -1.0, 1.0)}, r'max_acceleration of base_x is -1.0'),
    ({'dt': 0.0}, r'dt=0.0 must be a positive number of seconds'),
    ({'lower': (), 'upper': (), 'max_velocity': (), 'is_velocity': (), 'names': ()},
     r'lower is empty'),
    ({'lower': ((0.0, 1.0),)}, r'lower must be one-dimensional.*shape \(1, 2\)'),
])
def test_config_validation_messages(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_config(**overrides)


def test_config_rejects_non_numeric_limits():
    with pytest.raises(TypeError, match=r"max_velocity must be a sequence of float; got 'fast'"):
        make_config(max_velocity='fast')


def test_first_command_is_rate_limited_relative_to_the_measured_positions():
    safety = SafetyFilter(make_config())
    command, report = safety.filter(np.array([0.9, 1.0, 0.0, 0.0]), MEASURED)
    # shoulder may move 1.0 rad/s * 0.02 s per tick from the measured 0.5 rad.
    np.testing.assert_allclose(command, [0.52, 1.0, 0.0, 0.0])
    assert report.rate_limited == (0,) and report.limit_clamped == ()
    assert not report.held and report.clamped


def test_later_commands_are_relative_to_the_last_command():
    safety = SafetyFilter(make_config())
    safety.filter(MEASURED, MEASURED)
    target = np.array([0.9, 1.5, 0.0, 0.0])
    commands = [safety.filter(target, np.zeros(4))[0] for _ in range(30)]  # measured ignored
    steps = np.abs(np.diff(np.stack([MEASURED] + commands), axis=0))
    assert (steps[:, 0] <= 1.0 * DT + 1e-12).all() and (steps[:, 1] <= 2.0 * DT + 1e-12).all()
    np.testing.assert_allclose(commands[-1], target)  # reached after enough ticks
    _, report = safety.filter(target)
    assert not report.clamped and report.describe(safety.config) == 'ok'


def test_joint_limits_clamp_and_report_the_dims():
    safety = SafetyFilter(make_config())
    safety.filter(np.array([0.99, 0.01, 0.0, 0.0]), np.array([0.99, 0.01, 0.0, 0.0]))
    command, report = safety.filter(np.array([5.0, -3.0, 0.0, 0.0]))
    np.testing.assert_allclose(command[:2], [1.0, 0.0])
    assert report.limit_clamped == (0, 1) and report.rate_limited == ()
    assert report.describe(safety.config) == 'limit: shoulder, elbow'
    assert safety.stats.clamped == 1


def test_a_measured_position_outside_the_limits_never_gives_a_command_outside():
    safety = SafetyFilter(make_config())
    command, _ = safety.filter(np.array([1.5, 1.0, 0.0, 0.0]), np.array([1.2, 1.0, 0.0, 0.0]))
    assert command[0] == 1.0


def test_base_velocities_are_clamped_to_max_velocity_and_limits():
    safety = SafetyFilter(make_config())
    command, report = safety.filter(np.array([0.5, 1.0, -2.0, 0.9]), MEASURED)
    # base_x: |v| <= 0.3 (tighter than lower=-0.5); base_yaw: |v| <= 0.8 (tighter than 1.0).
    np.testing.assert_allclose(command[2:], [-0.3, 0.8])
    assert report.limit_clamped == (2, 3) and report.rate_limited == ()


def test_base_acceleration_limit_when_configured():
    safety = SafetyFilter(make_config(max_acceleration=(math.inf, math.inf, 1.0, 2.0)))
    command, report = safety.filter(np.array([0.5, 1.0, 0.3, -0.5]), MEASURED)
    # From rest: at most 1.0 m/s^2 and 2.0 rad/s^2 times 0.02 s.
    np.testing.assert_allclose(command[2:], [0.02, -0.04])
    assert report.rate_limited == (2, 3)


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_non_finite_action_holds_with_a_reason(bad):
    safety = SafetyFilter(make_config())
    first, _ = safety.filter(np.array([0.5, 1.0, 0.2, 0.1]), MEASURED)
    command, report = safety.filter(np.array([0.5, bad, 0.2, 0.1]))
    assert report.held and report.hold_reason is HoldReason.NON_FINITE
    assert report.non_finite == (1,)
    np.testing.assert_array_equal(command, [first[0], first[1], 0.0, 0.0])
    assert 'non-finite action: elbow' in report.describe(safety.config)
    assert safety.stats.non_finite == 1 and safety.stats.holds == 1


def test_hold_keeps_positions_and_zeroes_base_velocity():
    safety = SafetyFilter(make_config())
    moving, _ = safety.filter(np.array([0.5, 1.0, 0.3, -0.4]), MEASURED)
    assert moving[2] != 0.0
    command, report = safety.hold(HoldReason.STALE_INPUT)
    np.testing.assert_array_equal(command, [0.5, 1.0, 0.0, 0.0])
    assert report.hold_reason is HoldReason.STALE_INPUT
    assert report.describe(safety.config) == 'hold (stale input)'
    # After a hold the base restarts from zero velocity (acceleration limit applies from 0).
    np.testing.assert_array_equal(safety.last_command, command)


def test_hold_before_any_command_holds_the_measured_positions():
    safety = SafetyFilter(make_config())
    command, report = safety.hold(HoldReason.DISABLED, np.array([3.0, 1.0, 0.2, 0.2]))
    np.testing.assert_array_equal(command, [1.0, 1.0, 0.0, 0.0])  # clamped into the limits
    assert report.held


def test_without_a_reference_the_command_is_none():
    safety = SafetyFilter(make_config())
    command, report = safety.filter(np.array([0.5, 1.0, 0.0, 0.0]))
    assert command is None and report.hold_reason is HoldReason.NO_REFERENCE
    command, report = safety.filter(np.array([0.5, 1.0, 0.0, 0.0]),
                                    np.array([math.nan, 1.0, 0.0, 0.0]))
    assert command is None and report.hold_reason is HoldReason.NO_REFERENCE
    assert safety.hold(HoldReason.INFERENCE_FAILURE)[0] is None


def test_reset_makes_the_next_command_relative_to_measured_again():
    safety = SafetyFilter(make_config())
    safety.filter(np.array([0.5, 1.0, 0.0, 0.0]), MEASURED)
    safety.reset()
    assert safety.last_command is None and safety.stats.commands == 0
    command, _ = safety.filter(np.array([-0.5, 1.0, 0.0, 0.0]), np.array([-0.5, 1.0, 0.0, 0.0]))
    assert command[0] == -0.5


def test_shape_errors_name_the_expected_shape():
    safety = SafetyFilter(make_config())
    with pytest.raises(ValueError, match=r'action has shape \(3,\), expected \(4,\)'):
        safety.filter(np.zeros(3), MEASURED)
    with pytest.raises(ValueError, match=r'measured has shape \(2, 2\), expected \(4,\)'):
        safety.filter(np.zeros(4), np.zeros((2, 2)))


def test_random_actions_never_give_unsafe_commands():
    rng = np.random.default_rng(0)
    config = make_config(max_acceleration=(math.inf, math.inf, 1.0, 2.0))
    safety = SafetyFilter(config)
    lower, upper = np.array(LOWER), np.array(UPPER)
    speed = np.array(MAX_VELOCITY)
    previous = None
    for n in range(500):
        action = rng.normal(scale=3.0, size=4)
        if n % 7 == 0:
            action[rng.integers(4)] = rng.choice([math.nan, math.inf, -math.inf])
        command, report = safety.filter(action, MEASURED)
        assert np.isfinite(command).all()
        assert (command >= lower).all() and (command <= upper).all()
        assert (np.abs(command[2:]) <= speed[2:]).all()
        if previous is not None:
            step = np.abs(command - previous)
            assert (step[:2] <= speed[:2] * DT + 1e-12).all()
            assert (step[2:] <= np.array([1.0, 2.0]) * DT + 1e-12).all() or report.held
        previous = command
    stats = safety.stats
    assert stats.commands == 500 and stats.non_finite == stats.holds > 0
