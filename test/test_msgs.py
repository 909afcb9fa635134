"""pi0_msgs: real publish/subscribe and service round trips of every interface over DDS."""

import threading
import time
import uuid

from builtin_interfaces.msg import Duration
from pi0_msgs.msg import ActionChunk, PolicyStatus
from pi0_msgs.srv import SetInstruction
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

TIMEOUT_S = 10.0


@pytest.fixture
def nodes():
    """Two nodes on one executor spinning in a background thread."""
    context = rclpy.Context()
    rclpy.init(context=context)
    suffix = uuid.uuid4().hex[:8]
    talker = Node(f'talker_{suffix}', context=context)
    listener = Node(f'listener_{suffix}', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(talker)
    executor.add_node(listener)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield talker, listener, suffix
    executor.shutdown()
    talker.destroy_node()
    listener.destroy_node()
    rclpy.shutdown(context=context)
    thread.join(timeout=5)


def _round_trip(talker, listener, msg_type, topic, msg):
    received = []
    event = threading.Event()

    def on_msg(m):
        received.append(m)
        event.set()

    listener.create_subscription(msg_type, topic, on_msg, 10)
    pub = talker.create_publisher(msg_type, topic, 10)
    deadline = time.monotonic() + TIMEOUT_S
    while not event.is_set() and time.monotonic() < deadline:
        pub.publish(msg)
        event.wait(0.1)
    assert received, f'no {msg_type.__name__} received on {topic} within {TIMEOUT_S} s'
    return received[0]


def test_action_chunk_round_trip(nodes):
    """Round-trip every ActionChunk field over DDS, including the row-major action arrays."""
    talker, listener, suffix = nodes
    msg = ActionChunk()
    msg.header.stamp.sec = 12
    msg.header.stamp.nanosec = 345
    msg.embodiment = 'aloha'
    msg.sequence = 7
    msg.instruction = 'fold the towel'
    msg.horizon = 2
    msg.dof = 3
    msg.control_period = Duration(sec=0, nanosec=20_000_000)
    msg.joint_names = ['a', 'b', 'c']
    msg.actions = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    msg.unified_dof = 2
    msg.unified_names = ['u0', 'u1']
    msg.unified_actions = [1.0, 2.0, 3.0, 4.0]
    msg.inference_latency = 0.125
    got = _round_trip(talker, listener, ActionChunk, f'/chunk_{suffix}', msg)
    assert got.header.stamp.sec == 12 and got.header.stamp.nanosec == 345
    assert (got.embodiment, got.sequence, got.instruction) == ('aloha', 7, 'fold the towel')
    assert (got.horizon, got.dof, got.unified_dof) == (2, 3, 2)
    assert got.control_period.nanosec == 20_000_000
    assert list(got.joint_names) == ['a', 'b', 'c']
    assert list(got.actions) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert list(got.unified_names) == ['u0', 'u1']
    assert list(got.unified_actions) == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert got.inference_latency == pytest.approx(0.125)


def test_policy_status_round_trip(nodes):
    """Round-trip the PolicyStatus state constants, latencies, input ages and counters."""
    talker, listener, suffix = nodes
    msg = PolicyStatus()
    msg.state = PolicyStatus.STATE_HOLDING
    msg.state_name = 'HOLDING'
    msg.detail = "camera 'cam_high' is 0.31 s old"
    msg.embodiment = 'franka'
    msg.instruction = 'pick up the cup'
    msg.enabled = True
    msg.inference_latency_last = 0.05
    msg.inference_latency_p50 = 0.04
    msg.inference_latency_p99 = 0.09
    msg.control_rate_achieved = 49.8
    msg.control_rate_target = 50.0
    msg.input_names = ['cam_high', 'joint_states']
    msg.input_ages = [0.31, -1.0]
    msg.chunk_sequence = 3
    msg.chunk_index = 10
    msg.chunk_length = 50
    msg.chunk_age = 0.2
    msg.ticks = 1000
    msg.hold_ticks = 4
    msg.clamped_commands = 2
    msg.inference_failures = 1
    got = _round_trip(talker, listener, PolicyStatus, f'/status_{suffix}', msg)
    assert got.state == PolicyStatus.STATE_HOLDING != PolicyStatus.STATE_RUNNING
    assert got.detail == "camera 'cam_high' is 0.31 s old"
    assert got.enabled is True
    assert list(got.input_names) == ['cam_high', 'joint_states']
    assert list(got.input_ages) == pytest.approx([0.31, -1.0])
    assert (got.chunk_sequence, got.chunk_index, got.chunk_length) == (3, 10, 50)
    assert (got.ticks, got.hold_ticks, got.clamped_commands, got.inference_failures) == (
        1000, 4, 2, 1)
    assert got.control_rate_achieved == pytest.approx(49.8)


def test_set_instruction_service(nodes):
    """A SetInstruction request reaches the server and its response comes back."""
    talker, listener, suffix = nodes
    current = {'instruction': 'old'}

    def handle(request, response):
        response.previous_instruction = current['instruction']
        response.success = bool(request.instruction.strip())
        response.message = 'ok' if response.success else 'instruction is empty'
        if response.success:
            current['instruction'] = request.instruction
        return response

    listener.create_service(SetInstruction, f'/set_instruction_{suffix}', handle)
    client = talker.create_client(SetInstruction, f'/set_instruction_{suffix}')
    assert client.wait_for_service(timeout_sec=TIMEOUT_S)
    future = client.call_async(SetInstruction.Request(instruction='stack the blocks'))
    deadline = time.monotonic() + TIMEOUT_S
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.done(), 'no SetInstruction response'
    response = future.result()
    assert response.success is True
    assert response.previous_instruction == 'old'
    assert current['instruction'] == 'stack the blocks'
