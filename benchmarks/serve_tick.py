"""
Benchmark the control-tick period with inference in the node's process vs in a child process.

Runs the real ``pi0_policy_node`` (tiny random π0, ``strategy: ensemble``, so it infers back to
back) with a synthetic robot (480x640 cameras) over loopback DDS, once per
``policy_backend`` (inprocess, subprocess), each without and with CPU hog processes (busy loops,
one per core by default), and prints the period between control ticks: p50 / p99 / max, missed
ticks and gaps over 40 ms (goals for subprocess: p99 <= 21 ms, no gap > 40 ms with the hog).
Run: ``python benchmarks/serve_tick.py [--seconds 15] [--hogs N]``.
"""

import argparse
import faulthandler
import multiprocessing
import os
import pathlib
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from embodiment_adapters import load_robot_config, make_adapter  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from pi0_policy.ros.policy_node import GIL_SWITCH_INTERVAL, PolicyNode  # noqa: E402, I100
from pi0_policy.ros.sim.synthetic_robot import SyntheticRobot  # noqa: E402

ROBOT = 'aloha'
IMAGE_HW = (480, 640)
RATE_HZ = 50.0
GAP_LIMIT_S = 0.040
P99_GOAL_MS = 21.0
MISSED_FACTOR = 1.5  # a period longer than 1.5 control periods counts as missed ticks
MS = 1000.0


def _hog() -> None:
    while True:
        pass


def measure(backend: str, seconds: float) -> dict:
    """Run the node for ``seconds`` and return its tick statistics."""
    rclpy.init()
    node = PolicyNode(parameter_overrides=[
        Parameter('robot', value=ROBOT), Parameter('strategy', value='ensemble'),
        Parameter('policy_backend', value=backend), Parameter('preview', value=False)])
    bot = SyntheticRobot(make_adapter(load_robot_config(ROBOT)), image_hw=IMAGE_HW)
    ticks: list[float] = []
    tick = node._on_control_tick

    def timed_tick() -> None:
        ticks.append(time.perf_counter())
        tick()
    node._on_control_tick = timed_tick  # record the start of every control callback
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(bot)
    spinner = threading.Thread(target=executor.spin)
    spinner.start()
    try:
        node.trigger_configure()
        node.trigger_activate()
        time.sleep(seconds)
        chunks = node._ctl.sequence
        latency = node._status.latency.percentile(50)
    finally:
        node.close()
        executor.shutdown()
        spinner.join()
        node.destroy_node()
        bot.destroy_node()
        rclpy.try_shutdown()
    period = 1.0 / RATE_HZ
    intervals = np.diff(ticks[1:])  # (N,) seconds; the first tick is dropped (start-up)
    expected = (ticks[-1] - ticks[1]) / period
    return {'p50': np.percentile(intervals, 50) * MS, 'p99': np.percentile(intervals, 99) * MS,
            'max': intervals.max() * MS, 'missed': max(expected - intervals.size, 0.0),
            'expected': expected, 'long': int((intervals > MISSED_FACTOR * period).sum()),
            'gaps': int((intervals > GAP_LIMIT_S).sum()), 'chunks': chunks,
            'latency': latency * MS}


def main() -> None:
    """Measure every backend without and with the hog and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--seconds', type=float, default=15.0)
    parser.add_argument('--hogs', type=int, default=os.cpu_count(),
                        help='busy-loop processes in the "with hog" runs')
    parser.add_argument('--backends', nargs='+', default=['inprocess', 'subprocess'])
    args = parser.parse_args()
    # A run that hangs prints every thread's stack instead of blocking the machine.
    faulthandler.dump_traceback_later(20 * (args.seconds + 30), exit=True)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)  # as policy_node.main() does
    print(f'control ticks, robot {ROBOT}, {IMAGE_HW[0]}x{IMAGE_HW[1]} cameras, ensemble '
          f'(back-to-back inference), {args.seconds:.0f} s per run, {RATE_HZ:.0f} Hz:')
    print(f'  {"backend":<11} {"hog":<4} {"p50 ms":>7} {"p99 ms":>7} {"max ms":>7} '
          f'{"missed":>7} {">40ms":>6} {"chunks":>6} {"infer p50 ms":>12}')
    for hogs in (0, args.hogs):
        workers = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(hogs)]
        for w in workers:
            w.start()
        try:
            for backend in args.backends:
                r = measure(backend, args.seconds)
                print(f'  {backend:<11} {hogs:<4} {r["p50"]:7.2f} {r["p99"]:7.2f} '
                      f'{r["max"]:7.1f} {r["missed"] / r["expected"]:7.2%} {r["gaps"]:6d} '
                      f'{r["chunks"]:6d} {r["latency"]:12.1f}', flush=True)
        finally:
            for w in workers:
                w.terminate()
                w.join()
    print(f'  goals (subprocess): p99 <= {P99_GOAL_MS} ms, no gap > {GAP_LIMIT_S * MS:.0f} ms '
          'with the hog')


if __name__ == '__main__':
    main()
