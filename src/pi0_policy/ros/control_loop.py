"""
A fixed-rate control loop on its own thread, paced by the node's clock.

Why not an rclpy timer: every timer callback is dispatched by the executor's wait loop, which is
Python code shared with every subscription, service and timer of the process; on a small CPU that
loop, not the timer, decides when a tick runs. This loop only needs the GIL for the tick itself.

Timing follows the rcl timer's semantics: ticks keep an absolute schedule (a late tick is followed
by a short one) and periods that are missed entirely are skipped and counted, never queued. With
``use_sim_time`` the loop follows ROS time (the ``/clock`` topic) and waits while it is paused.

A tick that raises does not end the loop: the error is counted, logged (throttled) and passed to
``on_error`` (the node holds and reports ERROR), and the next tick runs on schedule.
"""

import os
import threading
from typing import Callable

from rclpy.clock import Clock, ClockType
from rclpy.logging import get_logger

NANOSECONDS = 1_000_000_000
# Polling step while simulated time is active: /clock may advance faster or slower than wall time.
SIM_TIME_POLL_S = 0.001
# A deadline this many periods ahead of the clock means the clock jumped backwards.
CLOCK_JUMP_PERIODS = 10
# Seconds between two log lines about failing ticks (every failure is still counted).
ERROR_LOG_PERIOD_S = 1.0


class ControlLoop:
    """Call ``tick()`` every ``period_s`` seconds of the given clock on a dedicated thread."""

    def __init__(self, clock: Clock, period_s: float, tick: Callable[[], None], *,
                 on_error: Callable[[Exception], None] | None = None,
                 priority: int = 0, name: str = 'pi0_control') -> None:
        """
        Create the loop (not started).

        Args:
            clock: The node's clock (ROS time; simulated when ``use_sim_time`` is set).
            period_s: Control period in seconds (> 0).
            tick: Called once per period on the loop thread; it must not block.
            on_error: Called on the loop thread with the exception of a tick that raised
                (after it was counted and logged); None only counts and logs.
            priority: SCHED_FIFO priority (1-99) for the loop thread, as ros2_control uses for
                its update loop; 0 keeps normal scheduling. Without permission (no root,
                CAP_SYS_NICE or rtprio limit) the loop warns and runs with normal scheduling.
            name: Thread name (shows in debuggers and ``top -H``); also the logger name.

        Raises:
            ValueError: If the period is not positive.

        """
        if not period_s > 0.0:
            raise ValueError(f'period_s must be > 0 seconds, got {period_s}; '
                             'set control_rate_hz to a positive rate.')
        self._clock = clock
        self._period_ns = int(round(period_s * NANOSECONDS))
        self._tick = tick
        self._on_error = on_error
        self._priority = priority
        # Whether the loop thread runs with real-time priority (set once the thread started).
        self.realtime = False
        self._logger = get_logger(name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # Periods skipped because a tick (or the machine) ran later than one whole period.
        self.missed_ticks = 0
        # Ticks that raised an exception.
        self.tick_errors = 0

    def start(self) -> None:
        """Start the loop thread; the first tick is one period from now."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and join its thread (a tick in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        """Whether the loop thread is alive and not asked to stop."""
        return self._thread.is_alive() and not self._stop.is_set()

    def _now_ns(self) -> int:
        return self._clock.now().nanoseconds

    def _sim_time(self) -> bool:
        return self._clock.clock_type == ClockType.ROS_TIME and self._clock.ros_time_is_active

    def _wait_until(self, deadline_ns: int) -> bool:
        """Sleep until the deadline of the clock; return False when asked to stop."""
        while not self._stop.is_set():
            remaining = (deadline_ns - self._now_ns()) / NANOSECONDS
            if remaining <= 0.0:
                return True
            # Wall time and ROS/steady time advance together unless simulated time is active.
            self._stop.wait(SIM_TIME_POLL_S if self._sim_time() else remaining)
        return False

    def _run_tick(self) -> None:
        """Run one tick; an exception is counted, logged and reported, never propagated."""
        try:
            self._tick()
        except Exception as error:  # noqa: B902 - the loop must keep commanding (a hold)
            self.tick_errors += 1
            self._logger.error(f'control tick failed ({self.tick_errors} so far): {error!r}',
                               throttle_duration_sec=ERROR_LOG_PERIOD_S)
            if self._on_error is not None:
                try:
                    self._on_error(error)
                except Exception as handler_error:  # noqa: B902 - same: keep the loop alive
                    self._logger.error(f'control tick error handler failed: {handler_error!r}',
                                       throttle_duration_sec=ERROR_LOG_PERIOD_S)

    def _set_realtime(self) -> None:
        """Give the calling (loop) thread SCHED_FIFO priority when asked and permitted."""
        if self._priority <= 0 or not hasattr(os, 'sched_setscheduler'):
            return
        try:  # pid 0 = the calling thread on Linux
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._priority))
            self.realtime = True
        except OSError as error:
            self._logger.warning(
                f'control thread keeps normal scheduling: SCHED_FIFO priority {self._priority} '
                f'was refused ({error}); allow it with an rtprio limit (limits.conf) or '
                'CAP_SYS_NICE, or set control_priority to 0 to silence this.')

    def _run(self) -> None:
        self._set_realtime()
        deadline = self._now_ns() + self._period_ns
        while self._wait_until(deadline):
            self._run_tick()
            deadline += self._period_ns
            now = self._now_ns()
            if now - deadline >= self._period_ns:  # a whole period missed: skip, do not queue
                skipped = (now - deadline) // self._period_ns
                self.missed_ticks += int(skipped)
                deadline += skipped * self._period_ns
            elif deadline > now + CLOCK_JUMP_PERIODS * self._period_ns:
                deadline = now + self._period_ns  # the clock jumped back (e.g. a /clock reset)
