"""Tests of the start pose in robot configs, the planned move and its execution (no ROS)."""

import embodiment_adapters
from embodiment_adapters import make_adapter, parse_robot_config
import numpy as np
from pi0_policy.runtime import start_pose as sp
from pi0_policy.runtime.status import NodeState
import pytest
from test_policy import ROBOT_CONFIG_DIR
# The Session tests' fixtures 'parts' and 'policy' (mock robot, tiny policy), made visible here
# and requested by name, and their Run helper.
from test_session import parts, policy, Run  # noqa: F401, I100
import yaml

DT = 0.02  # 50 Hz control
# openpi's ALOHA reset pose per arm (policy_metadata reset_pose).
OPENPI_ALOHA_RESET = [0.0, -1.5, 1.5, 0.0, 0.0, 0.0]
STEP_TOLERANCE = 1e-12


def robot_doc(robot: str) -> dict:
    return yaml.safe_load((ROBOT_CONFIG_DIR / f'{robot}.yaml').read_text())


def test_aloha_start_pose_is_openpis_reset_pose():
    config = embodiment_adapters.load_robot_config('aloha')
    pose = dict(zip([j.name for j in config.joints], config.start_pose))
    for arm in ('left', 'right'):
        arm_joints = [j.name for j in config.joints
                      if j.name.startswith(arm) and j.gripper is None]
        assert [pose[n] for n in arm_joints] == OPENPI_ALOHA_RESET
        gripper = next(j for j in config.joints if j.name == f'{arm}_gripper')
        assert pose[gripper.name] == gripper.gripper.open_value


@pytest.mark.parametrize('velocity_scale', [1.0, 0.5])
def test_move_is_synchronised_smooth_and_within_the_velocity_limits(velocity_scale):
    adapter = embodiment_adapters.load_adapter('aloha')
    measured = np.array([j.lower + 0.3 * (j.upper - j.lower) for j in adapter.config.joints])
    move = sp.plan_start_move(adapter, measured, dt=DT, velocity_scale=velocity_scale)
    goal = np.array(adapter.config.start_pose)
    np.testing.assert_array_equal(move.commands[-1], goal)
    np.testing.assert_array_equal(move.goal, goal)
    path = np.vstack([measured, move.commands])  # (K + 1, D)
    steps = np.abs(np.diff(path, axis=0))
    limit = adapter.max_velocity * velocity_scale * DT
    assert (steps <= limit + STEP_TOLERANCE).all()
    # The slowest joint uses its limit (not a needlessly slow move), then eases in and out.
    assert steps.max(axis=0).max() >= 0.95 * limit.min()
    assert (steps[0] < 0.1 * limit).all() and (steps[-1] < 0.1 * limit).all()
    # Every joint moves monotonically and all arrive together on the last step.
    direction = np.sign(goal - measured)
    assert (np.diff(path, axis=0) * direction >= -STEP_TOLERANCE).all()
    assert not np.isclose(move.commands[-2], goal).all()
    assert move.duration_s == pytest.approx(len(move.commands) * DT)


def test_half_speed_takes_twice_as_long_and_no_distance_is_one_step():
    adapter = embodiment_adapters.load_adapter('mock')
    measured = np.zeros(adapter.dof)
    fast = sp.plan_start_move(adapter, measured, dt=DT)
    slow = sp.plan_start_move(adapter, measured, dt=DT, velocity_scale=0.5)
    assert len(slow.commands) == pytest.approx(2 * len(fast.commands), abs=1)
    there = sp.plan_start_move(adapter, sp.start_goal(adapter), dt=DT)
    assert there.commands.shape == (1, adapter.dof)


def test_base_dims_are_commanded_zero():
    doc = robot_doc('mobile_manipulator')
    doc['start_pose'] = {j['name']: 0.5 * (j['lower'] + j['upper']) for j in doc['joints']}
    adapter = make_adapter(parse_robot_config(doc, name='mobile'))
    assert adapter.is_velocity.any()
    measured = np.zeros(adapter.dof)
    measured[adapter.is_velocity] = np.nan  # base velocities are not read
    move = sp.plan_start_move(adapter, measured, dt=DT)
    assert (move.commands[:, adapter.is_velocity] == 0.0).all()
    assert np.isfinite(move.commands).all()


def test_errors_name_the_value_and_the_fix():
    franka = embodiment_adapters.load_adapter('franka')
    with pytest.raises(ValueError, match=r"Robot 'franka' .* has no start_pose; add "
                                         r'"start_pose: \{fr3_joint1: <position>'):
        sp.plan_start_move(franka, np.zeros(franka.dof), dt=DT)
    mock = embodiment_adapters.load_adapter('mock')
    with pytest.raises(ValueError, match=r'shape \(3,\); expected \(4,\)'):
        sp.plan_start_move(mock, np.zeros(3), dt=DT)
    with pytest.raises(ValueError, match=r"Measured positions of \['mock_joint2'\] are not "
                                         'finite'):
        sp.plan_start_move(mock, np.array([0.0, np.nan, 0.0, 0.0]), dt=DT)
    with pytest.raises(ValueError, match='dt must be a positive control period'):
        sp.plan_start_move(mock, np.zeros(4), dt=0.0)
    with pytest.raises(ValueError, match=r'velocity_scale must be a fraction in \(0, 1\]'):
        sp.plan_start_move(mock, np.zeros(4), dt=DT, velocity_scale=1.5)


@pytest.mark.parametrize('edit, field, message', [
    (lambda pose: pose.pop('mock_joint3'), 'start_pose.mock_joint3', 'the field is required'),
    (lambda pose: pose.update(mock_joint2=2.0), 'start_pose.mock_joint2',
     r'within the joint limits \[-1.5, 1.5\]'),
    (lambda pose: pose.update(mock_joint4=0.0), 'start_pose.mock_joint4',
     r"known keys \['mock_gripper', 'mock_joint1', .*Did you mean 'mock_joint3'"),
])
def test_bad_start_pose_in_the_robot_config(edit, field, message):
    doc = robot_doc('mock')
    edit(doc['start_pose'])
    with pytest.raises(ValueError, match=message) as info:
        parse_robot_config(doc, source='mock.yaml', name='mock')
    assert f"field '{field}'" in str(info.value)


# ------------------------------------------------------------ execution by the run's Session


def play_move(run) -> list:
    """Tick until the move is over; return the commands it sent."""
    sent = []
    while run.session.motion is not None:
        run.step()
        if run.session.motion is not None:
            sent.append(run.published[-1])
    return sent


def session_run(request, *, enabled: bool) -> Run:
    """Return a Run of the Session tests (mock robot, tiny policy)."""
    return Run(request.getfixturevalue('parts'), request.getfixturevalue('policy'),
               enabled=enabled)


def test_session_plays_the_move_while_disabled_then_holds_the_start_pose(request):
    run = session_run(request, enabled=False)
    run.feed()
    message = run.session.start_move()
    move = run.session.motion.move
    assert message == (f'moving to the start pose: {len(move.commands)} commands, '
                       f'{move.duration_s:.2f} s')
    goal = sp.start_goal(run.adapter)
    sent = play_move(run)
    assert len(sent) == len(move.commands)
    np.testing.assert_array_equal(sent[-1], goal)
    path = np.vstack([run.positions, sent])
    limit = np.asarray(run.safety.config.max_velocity) * run.executor.config.dt
    assert (np.abs(np.diff(path, axis=0)) <= limit + STEP_TOLERANCE).all()
    # Done: the disabled run holds the start pose once, then stays disabled.
    np.testing.assert_array_equal(run.published[-1], goal)
    assert run.status.state == NodeState.DISABLED
    count = len(run.published)
    run.step()
    assert len(run.published) == count


def test_session_refuses_or_stops_the_move_safely(request):
    run = session_run(request, enabled=True)
    run.feed()
    with pytest.raises(RuntimeError, match=r'The policy is enabled; disable it \(~/enable '
                                           r'false\) before moving to the start pose'):
        run.session.start_move()
    run.session.set_enabled(False)
    run.now += 10.0  # joint states go stale
    with pytest.raises(RuntimeError, match='No fresh joint positions'):
        run.session.start_move()
    run.feed()
    run.session.start_move()
    run.step()
    # Any enable request stops the move.
    run.session.set_enabled(False)
    assert run.session.motion is None
    run.session.start_move()
    run.step()
    last = run.published[-1]
    # Stale joint states stop the move with a hold of the last command.
    run.now += 10.0
    run.session.tick()
    assert run.session.motion is None and run.status.state == NodeState.HOLDING
    assert run.status.detail == 'start pose move stopped: no fresh joint positions'
    np.testing.assert_array_equal(run.published[-1], last)
