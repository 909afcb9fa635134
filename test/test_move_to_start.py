"""The node's ~/move_to_start service (std_srvs/Trigger) over real rclpy, with the tiny π0."""

import time

import numpy as np
from pi0_msgs.msg import PolicyStatus
from pi0_policy.runtime.start_pose import start_goal
from std_srvs.srv import SetBool, Trigger
# The node tests' harness fixture (a policy node and a synthetic robot on loopback DDS), made
# visible here and requested by name.
from test_policy_node import command_values, make_harness, wait_for  # noqa: F401, I100

GOAL_TOLERANCE = 1e-9
MAX_AGE_S = 5.0


def last_commands(harness, since: float) -> dict[str, float] | None:
    """Return the newest commanded value per action name since ``since``, or None if none."""
    values = {}
    for spec in harness.adapter.commands:
        received = harness.robot.received(spec.topic, since)
        if not received:
            return None
        values.update(zip(spec.names, command_values(received[-1].message)))
    return values


def test_move_to_start_service_moves_a_disabled_node_to_the_start_pose(request):
    # A generous max_age: a joint-state gap on the loaded test machine would (rightly) stop the
    # move with a hold, which test_start_pose.py covers.
    harness = request.getfixturevalue('make_harness')('mock', enabled_at_start=False,
                                                      max_age=MAX_AGE_S)
    node_name = harness.node.get_fully_qualified_name()
    client = harness.robot.create_client(Trigger, f'{node_name}/move_to_start')
    harness.start()
    wait_for(lambda: any(s.message.state == PolicyStatus.STATE_DISABLED
                         for s in harness.statuses))
    since = time.monotonic()
    refusals = []

    def start_move() -> Trigger.Response | None:
        # DISABLED may be reported before the first joint state arrives over DDS: the node then
        # refuses ("No fresh joint positions") and moves nothing; ask again, as a client would.
        response = harness.call(client, Trigger.Request())
        if not response.success:
            refusals.append(response.message)
            return None
        return response
    try:
        response = wait_for(start_move)
    except AssertionError:
        raise AssertionError(f'move_to_start refused every time: {refusals[-3:]}') from None
    assert all('No fresh joint positions' in r for r in refusals), refusals
    assert response.message.startswith('moving to the start pose: ')
    goal = dict(zip(harness.adapter.action_names, start_goal(harness.adapter)))

    def arrived():
        values = last_commands(harness, since)
        return values is not None and all(abs(values[n] - goal[n]) <= GOAL_TOLERANCE
                                          for n in goal)
    try:
        wait_for(arrived)
    except AssertionError:
        details = [(s.message.state, s.message.detail) for s in harness.statuses[-5:]]
        raise AssertionError(f'not at the start pose: {last_commands(harness, since)}, goal '
                             f'{goal}, last statuses {details}') from None
    assert any(s.message.state == PolicyStatus.STATE_RUNNING and 'start pose' in s.message.detail
               for s in harness.statuses)
    # Every command of the move stays within one rate-limited step of the previous one.
    for spec in harness.adapter.commands:
        values = np.array([command_values(r.message)
                           for r in harness.robot.received(spec.topic, since)])
        index = [harness.adapter.action_names.index(n) for n in spec.names]
        step = harness.adapter.max_velocity[index] / 50.0  # the node's 50 Hz control period
        assert (np.abs(np.diff(values, axis=0)) <= step + GOAL_TOLERANCE).all()
    # With the policy enabled the service refuses, saying what to do.
    enable = harness.robot.create_client(SetBool, f'{node_name}/enable')
    assert harness.call(enable, SetBool.Request(data=True)).success
    refused = harness.call(client, Trigger.Request())
    assert not refused.success
    assert refused.message.startswith('The policy is enabled; disable it (~/enable false)')
