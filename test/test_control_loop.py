"""
The control loop thread: fixed rate on the node clock, skipped (not queued) missed periods.

The schedule is checked exactly in simulated time (the test advances the clock), so no check
depends on how loaded the machine is; real-time precision belongs to benchmarks/.
"""

import os
import threading
import time

from pi0_policy.ros.control_loop import ControlLoop, NANOSECONDS
import pytest
from rclpy.clock import Clock, ClockType, ROSClock
from rclpy.time import Time

PERIOD_S = 0.05
WAIT_S = 10.0  # generous upper bound for an event that should take a few periods


def steady() -> Clock:
    return Clock(clock_type=ClockType.STEADY_TIME)


class SimClock:
    """A ROS clock in simulated time that the test advances (as /clock would)."""

    def __init__(self) -> None:
        self.clock = ROSClock()
        self.clock._set_ros_time_is_active(True)
        self.now_ns = 1_000 * NANOSECONDS
        self.clock.set_ros_time_override(Time(nanoseconds=self.now_ns))

    def advance(self, seconds: float) -> None:
        self.now_ns += int(round(seconds * NANOSECONDS))
        self.clock.set_ros_time_override(Time(nanoseconds=self.now_ns))


def wait_until(condition, timeout: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.001)
    return condition()


def test_ticks_once_per_period_of_the_clock_and_stops_cleanly():
    """Simulated time makes the schedule exact, whatever the load of the machine."""
    sim, ticks = SimClock(), []
    loop = ControlLoop(sim.clock, PERIOD_S, lambda: ticks.append(sim.now_ns))
    loop.start()
    time.sleep(5 * PERIOD_S)
    assert ticks == []  # positive control below: time did not advance, so no tick is due
    for k in range(1, 11):
        sim.advance(PERIOD_S)
        assert wait_until(lambda: len(ticks) == k), f'tick {k} did not run'
    time.sleep(5 * PERIOD_S)
    assert len(ticks) == 10  # one tick per period, none queued or doubled
    assert all(b - a == int(PERIOD_S * NANOSECONDS) for a, b in zip(ticks, ticks[1:]))
    loop.stop()
    sim.advance(3 * PERIOD_S)
    time.sleep(5 * PERIOD_S)
    assert len(ticks) == 10, 'ticks after stop()'
    assert not loop.running and loop.missed_ticks == 0


def test_a_long_tick_skips_missed_periods_instead_of_queueing_them():
    sim, ticks = SimClock(), []

    def tick():
        ticks.append(sim.now_ns)
        if len(ticks) == 1:
            # This tick takes 3.5 periods of the clock: the ticks due 1 and 2 periods later
            # cannot run; the one due 3 periods later runs late, at once.
            sim.advance(3.5 * PERIOD_S)

    loop = ControlLoop(sim.clock, PERIOD_S, tick)
    loop.start()
    sim.advance(PERIOD_S)
    assert wait_until(lambda: len(ticks) == 2)
    time.sleep(5 * PERIOD_S)
    assert len(ticks) == 2 and loop.missed_ticks == 2  # skipped, not queued: no burst
    sim.advance(0.5 * PERIOD_S)  # the absolute schedule: the next tick is due at 5 periods
    assert wait_until(lambda: len(ticks) == 3)
    loop.stop()
    period = int(PERIOD_S * NANOSECONDS)
    assert [t - ticks[0] for t in ticks] == [0, int(3.5 * period), 4 * period]


def test_ticks_follow_the_steady_clock():
    """Real time: the loop ticks repeatedly and stops (no timing bound: the machine is shared)."""
    ticks = []
    loop = ControlLoop(steady(), PERIOD_S, lambda: ticks.append(time.monotonic()))
    loop.start()
    assert wait_until(lambda: len(ticks) >= 3)
    loop.stop()
    count = len(ticks)
    time.sleep(3 * PERIOD_S)
    assert len(ticks) == count, 'ticks after stop()'


def test_a_tick_that_raises_is_reported_and_the_loop_keeps_running():
    calls, errors = [], []
    done = threading.Event()

    def tick():
        calls.append(time.monotonic())
        if len(calls) == 6:
            done.set()
        if len(calls) % 2:
            raise RuntimeError(f'tick {len(calls)} failed')

    loop = ControlLoop(steady(), PERIOD_S, tick, on_error=errors.append)
    loop.start()
    assert done.wait(WAIT_S), f'the loop stopped after {len(calls)} ticks'
    loop.stop()
    assert loop.tick_errors == len(errors) >= 3
    assert [str(e) for e in errors[:3]] == ['tick 1 failed', 'tick 3 failed', 'tick 5 failed']


def test_an_error_handler_that_raises_does_not_stop_the_loop():
    calls = []
    done = threading.Event()

    def tick():
        calls.append(1)
        if len(calls) == 3:
            done.set()
        raise ValueError('bad tick')

    def on_error(error: Exception) -> None:
        raise RuntimeError('bad handler')

    loop = ControlLoop(steady(), PERIOD_S, tick, on_error=on_error)
    loop.start()
    assert done.wait(WAIT_S)
    loop.stop()
    assert loop.tick_errors >= 3


def test_period_must_be_positive():
    with pytest.raises(ValueError, match='period_s must be > 0 seconds, got 0.0'):
        ControlLoop(steady(), 0.0, lambda: None)


def test_realtime_priority_is_applied_where_permitted():
    """The loop asks for SCHED_FIFO; it runs either way, and reports what it got."""
    ticks = threading.Event()
    loop = ControlLoop(Clock(clock_type=ClockType.STEADY_TIME), 0.01, ticks.set, priority=5)
    loop.start()
    assert ticks.wait(2.0)
    loop.stop()
    try:  # the same request from this (test) thread tells whether the OS permits it here
        policy = os.sched_getscheduler(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
        os.sched_setscheduler(0, policy, os.sched_param(0))
        permitted = True
    except OSError:
        permitted = False
    assert loop.realtime is permitted
