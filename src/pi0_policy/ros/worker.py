"""
Run inference off the control path: a background thread that runs a task each time it is woken.

Pure Python (no rclpy). The control timer calls ``wake()`` (cheap, never blocks); the thread runs
``task()``, which decides itself whether an inference is due. The thread is joined in ``stop()``:
a thread still running torch when the interpreter exits aborts the process (ros2_toolchain.md §9).
"""

from collections.abc import Callable
import os
import threading

# Seconds the thread sleeps between checks of the stop flag when nobody wakes it.
POLL_PERIOD = 0.05


class InferenceWorker:
    """A single background thread that runs ``task`` after every ``wake``."""

    def __init__(self, task: Callable[[], None], on_error: Callable[[Exception], None], *,
                 name: str = 'pi0_inference', niceness: int = 0) -> None:
        """
        Create a stopped worker.

        Args:
            task: Called in the worker thread after each wake; does one inference or nothing.
            on_error: Called in the worker thread with any exception ``task`` raised; the worker
                keeps running (the node reports the error and holds).
            name: Thread name.
            niceness: Added to the thread's nice value on Linux (0 = unchanged); a positive value
                lets the control thread and the camera drivers preempt inference.

        """
        self._task = task
        self._on_error = on_error
        self._name = name
        self._niceness = niceness
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Return whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """
        Start the thread.

        Raises:
            RuntimeError: The worker is already running.

        """
        if self.running:
            raise RuntimeError(f'Worker {self._name!r} is already running; call stop() first.')
        self._stopping.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=False)
        self._thread.start()

    def wake(self) -> None:
        """Ask the thread to run the task once more (returns at once)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """
        Stop the thread and join it (waits for a running task to finish).

        Args:
            timeout: Seconds to wait for the join; None waits as long as the task takes.

        Returns:
            True if the thread has ended (or never started).

        """
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        if ended:
            self._thread = None
        return ended

    def _run(self) -> None:
        """Wait for wakes and run the task until stopped."""
        if self._niceness and hasattr(os, 'setpriority'):
            # Linux applies PRIO_PROCESS with a thread id to that thread only.
            thread_id = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread_id,
                           os.getpriority(os.PRIO_PROCESS, thread_id) + self._niceness)
        while not self._stopping.is_set():
            if not self._wake.wait(POLL_PERIOD):
                continue
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._task()
            except Exception as error:  # noqa: B902 - reported to the node, which holds
                self._on_error(error)
