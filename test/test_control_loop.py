"""The control loop thread: fixed rate on the node clock, skipped (not queued) missed periods."""

import threading
import time

from pi0_policy.ros.control_loop import ControlLoop
import pytest
from rclpy.clock import Clock, ClockType

PERIOD_S = 0.01
RUN_S = 0.5


def test_ticks_at_the_period_and_stops_cleanly():
    ticks = []
    loop = ControlLoop(Clock(clock_type=ClockType.STEADY_TIME), PERIOD_S,
                       lambda: ticks.append(time.monotonic()))
    loop.start()
    time.sleep(RUN_S)
    loop.stop()
    count = len(ticks)
    time.sleep(3 * PERIOD_S)
    assert len(ticks) == count, 'ticks after stop()'
    assert not loop.running
    expected = RUN_S / PERIOD_S
    assert expected * 0.8 <= count <= expected + 1
    # An absolute schedule: the mean period is the configured one.
    assert (ticks[-1] - ticks[0]) / (count - 1) == pytest.approx(PERIOD_S, rel=0.1)


def test_a_long_tick_skips_missed_periods_instead_of_queueing_them():
    ticks = []
    slow = threading.Event()

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 5:
            slow.set()
            time.sleep(3.5 * PERIOD_S)  # the ticks due 1 and 2 periods later cannot run

    loop = ControlLoop(Clock(clock_type=ClockType.STEADY_TIME), PERIOD_S, tick)
    loop.start()
    assert slow.wait(2.0)
    time.sleep(10 * PERIOD_S)
    loop.stop()
    # The tick due 3 periods later runs late (at 3.5); the two before it are skipped.
    assert loop.missed_ticks == 2
    gaps = [b - a for a, b in zip(ticks[5:], ticks[6:])]
    # No burst of queued ticks after the slow one: every later gap is most of a period.
    assert min(gaps) > 0.3 * PERIOD_S


def test_period_must_be_positive():
    with pytest.raises(ValueError, match='period_s must be > 0 seconds, got 0.0'):
        ControlLoop(Clock(clock_type=ClockType.STEADY_TIME), 0.0, lambda: None)
