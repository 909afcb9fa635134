"""
The control loop thread: fixed rate on the node clock, skipped (not queued) missed periods.

Bounds are generous on purpose: the machine running the tests may be small and loaded, so the
checks are about behaviour (an absolute schedule, skipping, surviving errors), not precise timing.
"""

import os
import threading
import time

from pi0_policy.ros.control_loop import ControlLoop
import pytest
from rclpy.clock import Clock, ClockType

PERIOD_S = 0.05
RUN_S = 1.0
WAIT_S = 10.0  # generous upper bound for an event that should take a few periods


def steady() -> Clock:
    return Clock(clock_type=ClockType.STEADY_TIME)


def test_ticks_at_the_period_and_stops_cleanly():
    ticks = []
    loop = ControlLoop(steady(), PERIOD_S, lambda: ticks.append(time.monotonic()))
    loop.start()
    time.sleep(RUN_S)
    loop.stop()
    count = len(ticks)
    time.sleep(3 * PERIOD_S)
    assert len(ticks) == count, 'ticks after stop()'
    assert not loop.running
    expected = RUN_S / PERIOD_S
    assert expected * 0.5 <= count <= expected + 1
    # An absolute schedule: late ticks are followed by early ones, so the mean period holds.
    assert (ticks[-1] - ticks[0]) / (count - 1 + loop.missed_ticks) == pytest.approx(
        PERIOD_S, rel=0.2)


def test_a_long_tick_skips_missed_periods_instead_of_queueing_them():
    ticks = []
    slow = threading.Event()

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 5:
            slow.set()
            # The ticks due 1 and 2 periods later cannot run; the half period leaves margin
            # on both sides for a late wake-up.
            time.sleep(3.5 * PERIOD_S)

    loop = ControlLoop(steady(), PERIOD_S, tick)
    loop.start()
    assert slow.wait(WAIT_S)
    before = loop.missed_ticks  # the machine may have skipped periods before the slow tick
    time.sleep(6 * PERIOD_S)
    loop.stop()
    # The tick due 3 periods later runs late (at 3.5); the two before it are skipped.
    assert loop.missed_ticks - before >= 2
    gaps = [b - a for a, b in zip(ticks[5:], ticks[6:])]
    # No burst of queued ticks right after the slow one: the next gap is most of a period.
    assert gaps and gaps[0] > 0.3 * PERIOD_S


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
