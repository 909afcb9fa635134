"""
Benchmark the policy node: control-tick jitter under inference load and message->tensor cost.

Part 1 runs the real ``pi0_policy_node`` (tiny random π0, ``strategy: ensemble`` so that it infers
back to back) with a synthetic robot over loopback DDS and records the period between control
ticks: p50, p99, max and missed ticks (targets: p99 <= 22 ms, missed < 0.1 %). Part 2 times the
conversion of three 480x640 ``sensor_msgs/Image`` messages into the model's input tensors
(target <= 3 ms), per encoding, and the PIL bilinear resize alone: the floor that bit-identity
with openpi's ``resize_with_pad`` sets. Run: ``python benchmarks/node_benchmark.py [--seconds 20]
[--robot aloha]``; ``--seconds 0`` runs part 2 only.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from tick_probe import run_ticks  # noqa: E402, I100
import torch  # noqa: E402

from embodiment_adapters import load_robot_config, make_adapter  # noqa: E402, I100
from pi0_policy.ros import conversions  # noqa: E402
from pi0_policy.runtime import transforms  # noqa: E402
from pi0_policy.runtime.policy import Pi0Policy  # noqa: E402

PERIOD_TARGET_P99_MS = 22.0
MISSED_TARGET = 0.001
CONVERSION_TARGET_MS = 3.0
IMAGE_HW = (480, 640)
NUM_IMAGES = 3
ENCODINGS = ('rgb8', 'bgr8', 'mono8')
CONVERSION_REPEATS = 50
MISSED_FACTOR = 1.5  # a period longer than 1.5 control periods counts as missed ticks
MS = 1000.0


def tick_jitter(robot: str, seconds: float, strategy: str) -> None:
    """Run the node under back-to-back inference and print the tick period distribution."""
    run = run_ticks(robot, seconds, IMAGE_HW, strategy=strategy)
    period = 1.0 / 50.0
    intervals, expected = run.intervals, run.expected
    missed = expected - intervals.size
    print(f'control ticks ({robot}, {strategy}, {seconds:.0f} s, {run.chunks} chunks, '
          f'inference p50 {run.latency * MS:.1f} ms, torch threads {torch.get_num_threads()}):')
    print(f'  period p50 {np.percentile(intervals, 50) * MS:.2f} ms, '
          f'p99 {np.percentile(intervals, 99) * MS:.2f} ms (target <= {PERIOD_TARGET_P99_MS}), '
          f'max {intervals.max() * MS:.2f} ms')
    print(f'  ticks {intervals.size + 1}, expected {expected:.0f}, missed {max(missed, 0):.0f} '
          f'({max(missed, 0) / expected:.3%}; target < {MISSED_TARGET:.1%}), '
          f'long periods (> {MISSED_FACTOR} x) {(intervals > MISSED_FACTOR * period).sum()}')


def conversion_cost(robot: str) -> None:
    """Print the time from three 480x640 Image messages to the model input tensors."""
    rng = np.random.default_rng(0)
    adapter = make_adapter(load_robot_config(robot))
    policy = Pi0Policy.from_checkpoint(None, adapter)
    example = policy.example_observation()
    cameras = [cam.name for cam in adapter.cameras if cam.model_slot is not None]
    for encoding in ENCODINGS:
        messages = [conversions.rgb_to_image(rng.integers(0, 256, IMAGE_HW + (3,), np.uint8),
                                             encoding=encoding) for _ in range(NUM_IMAGES)]
        _time_conversion(policy, example, cameras, messages, encoding)
    policy.close()


def _time_conversion(policy, example, cameras, messages, encoding) -> None:
    decode, total, resize = [], [], []
    size = policy.pipeline.image_size
    for _ in range(CONVERSION_REPEATS):
        start = time.perf_counter()
        images = {name: conversions.image_to_rgb(msg) for name, msg in zip(cameras, messages)}
        decoded = time.perf_counter()
        inputs = policy.pipeline.prepare({**example, 'images': images})
        torch.from_numpy(inputs.images)[None]
        total.append(time.perf_counter() - start)
        decode.append(decoded - start)
        start = time.perf_counter()
        for image in images.values():
            transforms.resize_with_pad(image, size, size)
        resize.append(time.perf_counter() - start)
    print(f'message -> tensor, {len(images)} x {IMAGE_HW[0]}x{IMAGE_HW[1]} {encoding} images:')
    print(f'  Image -> numpy RGB   p50 {np.median(decode) * MS:.2f} ms')
    print(f'  + resize/normalise -> tensor p50 {np.median(total) * MS:.2f} ms '
          f'(target <= {CONVERSION_TARGET_MS} ms)')
    print(f'  of which PIL bilinear resize alone p50 {np.median(resize) * MS:.2f} ms')


def main() -> None:
    """Parse the arguments and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--seconds', type=float, default=20.0,
                        help='tick measurement length (0 skips it)')
    parser.add_argument('--robot', default='aloha', help='robot config name')
    parser.add_argument('--strategy', default='ensemble', help='chunk strategy (ensemble '
                        'infers back to back)')
    args = parser.parse_args()
    conversion_cost(args.robot)
    if args.seconds > 0:
        tick_jitter(args.robot, args.seconds, args.strategy)


if __name__ == '__main__':
    main()
