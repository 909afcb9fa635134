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
import os
import subprocess
import sys

import numpy as np

from tick_probe import run_ticks

ROBOT = 'aloha'
IMAGE_HW = (480, 640)
RATE_HZ = 50.0
GAP_LIMIT_S = 0.040
P99_GOAL_MS = 21.0
MS = 1000.0
# A busy loop in a fresh interpreter (a fork would inherit rclpy's signal handlers).
HOG = 'while True: pass'


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
    print(f'control ticks, robot {ROBOT}, {IMAGE_HW[0]}x{IMAGE_HW[1]} cameras, ensemble '
          f'(back-to-back inference), {args.seconds:.0f} s per run, {RATE_HZ:.0f} Hz:')
    print(f'  {"backend":<11} {"hog":<4} {"p50 ms":>7} {"p99 ms":>7} {"max ms":>7} '
          f'{"missed":>7} {">40ms":>6} {"chunks":>6} {"infer p50 ms":>12}')
    for hogs in (0, args.hogs):
        workers = [subprocess.Popen([sys.executable, '-c', HOG]) for _ in range(hogs)]
        try:
            for backend in args.backends:
                r = run_ticks(ROBOT, args.seconds, IMAGE_HW, strategy='ensemble',
                              policy_backend=backend, preview=False)
                ms = r.intervals * MS
                print(f'  {backend:<11} {hogs:<4} {np.percentile(ms, 50):7.2f} '
                      f'{np.percentile(ms, 99):7.2f} {ms.max():7.1f} {r.missed():7.2%} '
                      f'{int((r.intervals > GAP_LIMIT_S).sum()):6d} {r.chunks:6d} '
                      f'{r.latency * MS:12.1f}', flush=True)
        finally:
            for w in workers:
                w.kill()
                w.wait()
    print(f'  goals (subprocess): p99 <= {P99_GOAL_MS} ms, no gap > {GAP_LIMIT_S * MS:.0f} ms '
          'with the hog')


if __name__ == '__main__':
    main()
