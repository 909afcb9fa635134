"""
Measure the per-tick cost of the chunk executors and the safety filter (prints microseconds).

Run: ``python benchmarks/chunking_benchmark.py`` from the repository root with the venv active.
One simulated 50 Hz tick = executor.needs_inference + executor.next_action + SafetyFilter.filter;
chunks of H = 50 actions and D = 14 dims arrive every 10 ticks (0.2 s latency), timed separately.
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'src'))

from pi0_policy.runtime.chunking import ExecutionConfig, make_executor  # noqa: E402
from pi0_policy.runtime.safety import HoldReason, SafetyConfig, SafetyFilter  # noqa: E402

RATE_HZ = 50.0
HORIZON = 50  # actions per chunk
DIMS = 14  # bimanual: 2 x (6 joints + gripper)
INFERENCE_EVERY = 10  # ticks between chunks
LATENCY_TICKS = 10  # age of a chunk's observation when it arrives
NANOSECONDS_PER_MICROSECOND = 1e3
PERCENTILE = 99


def _bench(strategy: str, ticks: int, rng: np.random.Generator) -> dict[str, list[float]]:
    dt = 1.0 / RATE_HZ
    executor = make_executor(ExecutionConfig(strategy=strategy, execute_steps=INFERENCE_EVERY,
                                             control_rate_hz=RATE_HZ))
    safety = SafetyFilter(SafetyConfig(lower=[-3.0] * DIMS, upper=[3.0] * DIMS,
                                       max_velocity=[2.0] * DIMS, is_velocity=[False] * DIMS,
                                       dt=dt))
    measured = np.zeros(DIMS)
    chunks = [rng.normal(scale=0.5, size=(HORIZON, DIMS)) for _ in range(8)]
    times: dict[str, list[float]] = {'tick': [], 'add_chunk': []}
    sequence = 0
    for k in range(ticks):
        now = k * dt
        if k % INFERENCE_EVERY == 0:
            start = time.perf_counter_ns()
            executor.add_chunk(chunks[sequence % len(chunks)], now - LATENCY_TICKS * dt, sequence)
            times['add_chunk'].append(time.perf_counter_ns() - start)
            sequence += 1
        start = time.perf_counter_ns()
        executor.needs_inference(now)
        action = executor.next_action(now)
        if action is None:
            safety.hold(HoldReason.NO_ACTION, measured)
        else:
            safety.filter(action, measured)
        times['tick'].append(time.perf_counter_ns() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    """Print p50 / p99 / max per strategy, in microseconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--ticks', type=int, default=20000, help='simulated control ticks')
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f'{"strategy":<10} {"what":<10} {"p50 us":>8} {"p99 us":>8} {"max us":>8}')
    for strategy in ('sync', 'async', 'ensemble'):
        for what, samples in _bench(strategy, args.ticks, rng).items():
            micros = [s / NANOSECONDS_PER_MICROSECOND for s in samples]
            p99 = statistics.quantiles(micros, n=100)[PERCENTILE - 1]
            print(f'{strategy:<10} {what:<10} {statistics.median(micros):8.1f} {p99:8.1f} '
                  f'{max(micros):8.1f}')


if __name__ == '__main__':
    main()
