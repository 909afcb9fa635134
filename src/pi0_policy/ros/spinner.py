"""
A multi-threaded spin that reports what callbacks raise and drains before the nodes go.

rclpy 7.1.6's ``MultiThreadedExecutor`` hands each ready callback to a thread pool, but
``shutdown()`` neither waits for callbacks still queued or running (its wait is skipped once the
shutdown flag is set) nor stops the pool, and an exception raised in a callback is stored in the
callback's task and never read: it surfaces, if at all, as "The following exception was never
retrieved" when the task is garbage collected, seconds or tests later. A callback still running
at that ``shutdown()`` then fails on the executor's destroyed guard condition, and one queued
when a node is destroyed on the entity it takes from ("cannot use Destroyable because
destruction was requested").

``Spinner`` does the same dispatch through rclpy's public ``wait_for_ready_callbacks``, passes
every callback exception to ``on_error`` as it happens, and ``shutdown()`` returns only when no
callback runs any more (the callbacks first, then the executor), so nodes can then be destroyed
safely. Either call ``spin_once`` from one loop of your own and ``shutdown`` after it ended, or
let ``start()`` run that loop in a thread and ``stop()`` end it.
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
import threading

from rclpy.context import Context
from rclpy.executors import (ConditionReachedException, Executor, ExternalShutdownException,
                             ShutdownException, TimeoutException)
from rclpy.node import Node
from rclpy.task import Task

# Longest wait of one step of ``start()``'s spin loop: how soon ``stop()`` returns (seconds).
SPIN_PERIOD_S = 0.05
# Nothing to run this spin step, or the executor/context is going away: not an error.
_NO_WORK = (TimeoutException, ShutdownException, ExternalShutdownException,
            ConditionReachedException)


class Spinner:
    """Run the callbacks of some nodes on a pool of threads; see the module docstring."""

    def __init__(self, threads: int, on_error: Callable[[BaseException], None], *,
                 context: Context | None = None) -> None:
        """
        Create the executor (waiting and dispatch) and the callback threads.

        Args:
            threads: Callback threads (callback groups still decide what may run together).
            on_error: Called, on a callback thread, with each exception a callback raised.
            context: The ROS context (default: the global one).

        Raises:
            ValueError: When ``threads`` < 1.
        """
        if threads < 1:
            raise ValueError(f'threads={threads} must be >= 1.')
        self._executor = Executor(context=context)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix='ros_callbacks')
        self._on_error = on_error
        self._spinning = threading.Event()
        self._thread: threading.Thread | None = None

    def add_node(self, node: Node) -> None:
        """Serve ``node``'s callbacks."""
        self._executor.add_node(node)

    def spin_once(self, timeout_sec: float) -> None:
        """Wait up to ``timeout_sec`` for a ready callback and hand it to a callback thread."""
        try:
            task, _, _ = self._executor.wait_for_ready_callbacks(timeout_sec=timeout_sec)
        except _NO_WORK:
            return
        self._pool.submit(self._run, task)

    def _run(self, task: Task) -> None:
        task()
        error = task.exception()  # read here: rclpy would leave it unread
        if error is not None:
            self._on_error(error)

    def start(self, period_s: float = SPIN_PERIOD_S) -> None:
        """
        Spin in a background thread until ``stop()`` or the ROS context is shut down.

        Errors of the loop itself go to ``on_error`` too.
        """
        if self._thread is not None:
            raise RuntimeError('Spinner.start: already spinning; call stop() first.')
        self._spinning.set()
        self._thread = threading.Thread(target=self._loop, args=(period_s,),
                                        name='ros_spin', daemon=True)
        self._thread.start()

    def _loop(self, period_s: float) -> None:
        # Once the context is shut down every wait returns at once: end rather than busy-loop.
        while self._spinning.is_set() and self._executor.context.ok():
            try:
                self.spin_once(period_s)
            except Exception as error:  # noqa: B902 - reported; the loop must go on
                self._on_error(error)

    def stop(self) -> None:
        """End the background spin (if any), then ``shutdown()``."""
        self._spinning.clear()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.shutdown()

    def shutdown(self) -> None:
        """Wait until every handed-out callback has finished, then release the executor."""
        self._pool.shutdown(wait=True)  # first: callbacks use the executor's guard condition
        self._executor.shutdown()
