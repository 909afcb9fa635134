"""
pi0_policy_node with ``policy_backend`` remote and subprocess: real rclpy, real websocket server.

The server (``PolicyServer`` with the tiny random π0) runs in this process on a loopback port,
or as the node's child process; the node drives the synthetic robot through it.
"""

import time

from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
from pi0_msgs.msg import PolicyStatus
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.serving.formats import serving_for
from pi0_policy.serving.server import PolicyServer, ServerConfig, ServerThread
import pytest
import test_policy_node
from test_policy_node import FAILURE, RATE_HZ, wait_for

API_KEY = 'node-test-key'
# The node + synthetic robot harness fixture of the in-process node tests.
make_harness = test_policy_node.make_harness


def start_server(port: int = 0, api_key: str | None = None) -> ServerThread:
    """Serve the tiny mock-robot policy on loopback."""
    policy = Pi0Policy.from_checkpoint(None, 'mock')
    policy.warmup()
    return ServerThread(PolicyServer(policy, serving_for('mock'),
                                     ServerConfig(port=port, api_key=api_key)))


def backend_levels(harness, since: float) -> list[int]:
    """Return the levels of the 'policy server' diagnostics received since ``since``."""
    return [status.level for received in harness.diagnostics if received.time > since
            for status in received.message.status if status.name.endswith(': policy server')]


def joint_commands(harness, since: float) -> list[tuple[float, ...]]:
    topic = harness.adapter.commands[0].topic
    return [tuple(r.message.points[0].positions) for r in harness.robot.received(topic, since)]


def test_remote_node_drives_the_robot_and_rides_out_a_server_restart(make_harness):
    server = start_server(api_key=API_KEY)
    port = server.server.port
    try:
        harness = make_harness('mock', policy_backend='remote', policy_url=server.url,
                               policy_api_key=API_KEY)
        harness.start()
        harness.wait_running()
        wait_for(lambda: len(harness.chunks) >= 2)
        wait_for(lambda: DiagnosticStatus.OK in backend_levels(harness, 0.0))
        assert server.server.requests >= 2
        moving = joint_commands(harness, time.monotonic() - 0.5)
        assert len(set(moving)) > 1  # the robot follows the chunks

        server.stop()  # the server goes away mid-run
        stopped = time.monotonic()
        hold = wait_for(lambda: next((s for s in harness.statuses if s.time > stopped and
                                      s.message.state == PolicyStatus.STATE_HOLDING), None))
        assert 'inference failure' in hold.message.detail
        assert f'127.0.0.1:{port}' in hold.message.detail
        wait_for(lambda: DiagnosticStatus.ERROR in backend_levels(harness, stopped))
        time.sleep(0.3)
        held = joint_commands(harness, hold.time + 2.0 / RATE_HZ)
        assert held and len(set(held)) == 1  # holding one pose while the server is away

        server = start_server(port=port, api_key=API_KEY)  # back on the same port
        restarted = time.monotonic()
        wait_for(lambda: any(s.time > restarted and s.message.state == PolicyStatus.STATE_RUNNING
                             for s in harness.statuses))
        wait_for(lambda: DiagnosticStatus.OK in backend_levels(harness, restarted))
        assert harness.node._policy.health().reconnects >= 1
    finally:
        server.stop()


@pytest.mark.parametrize('url_of, key, expected', [
    (lambda server: 'ws://127.0.0.1:9', None, 'ws://127.0.0.1:9 unreachable'),
    (lambda server: server.url, 'wrong', 'HTTP 401'),
], ids=['unreachable', 'wrong-api-key'])
def test_a_server_that_cannot_be_used_fails_configure(make_harness, capfd, url_of, key,
                                                      expected):
    server = start_server(api_key=API_KEY)
    try:
        overrides = {'policy_backend': 'remote', 'policy_url': url_of(server)}
        if key:
            overrides['policy_api_key'] = key
        harness = make_harness('mock', **overrides)
        assert harness.node.trigger_configure() == FAILURE
        assert harness.state() == 'unconfigured'
        err = capfd.readouterr().err
        assert 'configure failed' in err and expected in err
    finally:
        server.stop()


def test_subprocess_node_runs_the_model_in_a_child(make_harness):
    harness = make_harness('mock', policy_backend='subprocess')
    harness.start()
    harness.wait_running()
    child = harness.node._policy
    assert child.pid is not None and child.health().connected
    wait_for(lambda: len(harness.chunks) >= 2)
    chunk = harness.chunks[-1].message
    assert chunk.horizon == 50 and chunk.dof == harness.adapter.dof
    assert np.isfinite(np.asarray(chunk.actions)).all()


def test_a_slow_server_shows_as_holds_between_chunks_with_the_reason(make_harness):
    """Chunks that run out before the next arrives: holds whose detail names the latency."""
    server = start_server()
    try:
        harness = make_harness('mock', policy_backend='remote', policy_url=server.url,
                               strategy='sync', execute_steps=2)
        harness.start()
        hold = wait_for(lambda: next((s for s in harness.statuses
                                      if 'the last inference took' in s.message.detail), None))
        assert hold.message.state == PolicyStatus.STATE_HOLDING
        assert 'waiting for the next chunk' in hold.message.detail
    finally:
        server.stop()
