"""Spinner: callback exceptions are reported as they happen and shutdown drains the callbacks."""

import threading
import time

from pi0_policy.ros.spinner import Spinner
import pytest
import rclpy
from rclpy.context import Context
from std_msgs.msg import String

TIMEOUT_S = 10.0
SPIN_PERIOD_S = 0.05


@pytest.fixture
def context():
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def spin_until(spinner: Spinner, condition) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition() and time.monotonic() < deadline:
        spinner.spin_once(SPIN_PERIOD_S)
    assert condition()


def test_a_callback_exception_reaches_on_error(context):
    errors: list[BaseException] = []
    spinner = Spinner(2, errors.append, context=context)
    node = rclpy.create_node('spinner_errors', context=context)
    spinner.add_node(node)

    def fail() -> None:
        raise RuntimeError('callback failed')
    node.create_timer(0.01, fail)
    try:
        spin_until(spinner, lambda: errors)
    finally:
        spinner.shutdown()
        node.destroy_node()
    assert isinstance(errors[0], RuntimeError) and 'callback failed' in str(errors[0])


def test_shutdown_waits_for_running_callbacks_before_the_node_goes(context):
    errors: list[BaseException] = []
    spinner = Spinner(2, errors.append, context=context)
    node = rclpy.create_node('spinner_drain', context=context)
    spinner.add_node(node)
    started, finished = threading.Event(), threading.Event()
    pub = node.create_publisher(String, 'spinner_drain_topic', 10)

    def slow() -> None:
        if started.is_set():
            return
        started.set()
        time.sleep(0.3)
        pub.publish(String(data='still alive'))  # raises if the node was destroyed meanwhile
        finished.set()
    node.create_timer(0.01, slow)
    try:
        spin_until(spinner, started.is_set)
    finally:
        spinner.shutdown()
        assert finished.is_set(), 'shutdown returned while a callback was still running'
        node.destroy_node()
    assert not errors, errors


def test_start_and_stop_spin_in_a_thread(context):
    errors: list[BaseException] = []
    spinner = Spinner(2, errors.append, context=context)
    node = rclpy.create_node('spinner_thread', context=context)
    spinner.add_node(node)
    ticks = threading.Event()
    node.create_timer(0.01, ticks.set)
    spinner.start(SPIN_PERIOD_S)
    try:
        with pytest.raises(RuntimeError, match='already spinning'):
            spinner.start()
        assert ticks.wait(TIMEOUT_S)
    finally:
        spinner.stop()
        node.destroy_node()
    assert not errors, errors


def test_the_spin_thread_ends_when_the_context_is_shut_down():
    context = Context()
    rclpy.init(context=context)
    errors: list[BaseException] = []
    spinner = Spinner(1, errors.append, context=context)
    spinner.start(SPIN_PERIOD_S)
    rclpy.shutdown(context=context)
    thread = spinner._thread
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), 'the spin loop kept running on a shut-down context'
    spinner.stop()
    assert not errors, errors


def test_threads_must_be_positive():
    with pytest.raises(ValueError, match='threads=0 must be >= 1'):
        Spinner(0, print)
