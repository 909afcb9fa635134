"""
Process plumbing of the lifecycle policy node: a safe ``change_state`` service, signal handling.

``guard_change_state`` answers a ``change_state`` request for a transition that is not valid in
the current state (activate while unconfigured, an unknown id, configure while active) with
failure. rclpy 7.1.6 (the only Jazzy wheel) would let the request raise ``RCLError: Transition is
not registered`` inside the executor and end the process (fixed upstream, not in that wheel).

``spin_until_signal`` runs a node with rclpy's own signal handlers off: SIGINT and SIGTERM only
set a flag, the spin loop returns, and the caller stops the robot (final hold, zero base
velocity) while the ROS context can still deliver it; only then is the context shut down.
Further signals while stopping are logged and ignored: a terminal's Ctrl-C reaches the node
twice (the process group's SIGINT and the one ``ros2 launch`` forwards), and interrupting the stop
half-way would leave an inference thread running torch at exit (an abort). ``ros2 launch``'s
SIGTERM/SIGKILL escalation, or a SIGKILL by hand, still bounds a stop that hangs; the final
commands are sent first, before anything that can take long.
"""

from collections.abc import Callable
import signal
import threading

from lifecycle_msgs.msg import Transition
from pi0_policy.ros.spinner import Spinner
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode
from rclpy.logging import get_logger

# Longest wait of one spin step: how soon a signal is noticed (seconds).
SPIN_PERIOD_S = 0.1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def transition_problem(node: LifecycleNode, transition: Transition) -> str | None:
    """Return why ``transition`` (by label, else by id) is invalid now, or None if it is valid."""
    state = node._state_machine.current_state[1]
    available = node._state_machine.available_transitions  # (id, label, start, ..., goal)
    if transition.label:
        if any(label == transition.label for _, label, *_ in available):
            return None
        wanted = f'label {transition.label!r}'
    else:
        if any(tid == transition.id for tid, *_ in available):
            return None
        wanted = f'id {transition.id}'
    valid = ', '.join(f'{label} (id {tid})' for tid, label, *_ in available) or 'none'
    return (f"Transition {wanted} is not valid in state '{state}'; valid now: {valid}. "
            'The node stays in its state.')


def guard_change_state(node: LifecycleNode) -> None:
    """Make ``node``'s change_state service answer an invalid transition with failure."""
    service = node._service_change_state
    handle = service.callback

    def guarded(request, response):
        problem = transition_problem(node, request.transition)
        if problem is not None:
            node.get_logger().warning(f'change_state refused: {problem}')
            response.success = False
            return response
        return handle(request, response)
    service.callback = guarded


def spin_until_signal(node: LifecycleNode, *, threads: int,
                      on_stop: Callable[[], None]) -> None:
    """
    Spin ``node`` until SIGINT / SIGTERM, then call ``on_stop`` while ROS still runs.

    rclpy must have been initialised with ``SignalHandlerOptions.NO``. The node is destroyed
    and rclpy shut down afterwards, whatever happened.
    """
    stop = threading.Event()
    # Not the node's logger: /rosout may be going away.
    logger = get_logger(node.get_name())

    def on_signal(signum, frame) -> None:
        if stop.is_set():
            logger.info(
                f'{signal.Signals(signum).name} ignored: already stopping (final commands '
                'first, then the policy is released).')
            return
        stop.set()
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    executor = Spinner(threads, lambda error: logger.error(f'a callback raised: {error!r}'))
    try:
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            on_stop()  # the context is still up: the final commands are delivered
        finally:
            executor.shutdown()  # no callback runs on the node once it is destroyed
            node.destroy_node()
            rclpy.try_shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
