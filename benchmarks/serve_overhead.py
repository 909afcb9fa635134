"""
Benchmark the per-request cost of openpi's websocket protocol against in-process inference.

One ``PolicyServer`` (tiny random π0, robot aloha) runs in a child ``pi0-policy serve``; the
client sends 224x224 camera images (1 camera: cam_high; 3 cameras: + both wrists), as openpi's
clients do after their resize. Printed per camera count: the in-process ``Pi0Policy.infer`` time,
the remote round trip, and the protocol overhead = round trip - the server's own inference time
(``server_timing.infer_ms``): encoding, loopback transfer, decoding, queueing, both ways (goal
<= 2 ms). Also the msgpack-numpy encode+decode of one request alone (the serialisation floor).
Run: ``python benchmarks/serve_overhead.py [--requests 100]``.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from embodiment_adapters import load_adapter  # noqa: E402, I100
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402
from pi0_policy.runtime.policy import Pi0Policy  # noqa: E402
from pi0_policy.serving import codec  # noqa: E402
from pi0_policy.serving.child import SubprocessPolicy  # noqa: E402
from pi0_policy.serving.client import TIME_SERVER  # noqa: E402
import torch  # noqa: E402

ROBOT = 'aloha'
SIDE = 224
CAMERA_SETS = {1: ('cam_high',), 3: ('cam_high', 'cam_left_wrist', 'cam_right_wrist')}
GOAL_MS = 2.0
MS = 1000.0


def observation(policy: Pi0Policy, cameras, rng) -> dict:
    obs = policy.example_observation()
    obs['images'] = {c: rng.integers(0, 256, (SIDE, SIDE, 3), np.uint8) for c in cameras}
    return obs


def stats(samples) -> str:
    a = np.asarray(samples) * MS
    return f'p50 {np.percentile(a, 50):6.2f}  p99 {np.percentile(a, 99):6.2f} ms'


def main() -> None:
    """Time in-process and remote inference and print the protocol overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--requests', type=int, default=100)
    parser.add_argument('--threads', type=int, default=1, help='torch threads (both sides)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    adapter = load_adapter(ROBOT)
    policy = Pi0Policy.from_checkpoint(None, adapter)
    policy.warmup()
    child = SubprocessPolicy(adapter, ROBOT, ['--torch-threads', str(args.threads)])
    openpi = WebsocketClientPolicy(child.remote.url.replace('ws://', ''),
                                   api_key=child.api_key)
    print(f'protocol overhead, robot {ROBOT}, {SIDE}x{SIDE} images, {args.requests} requests, '
          f'torch threads {args.threads}:')
    try:
        for count, cameras in CAMERA_SETS.items():
            obs = observation(policy, cameras, rng)
            request = child.remote.mapping.to_request(obs)
            frame = codec.packb(request)
            local, codec_s, ours, ours_over, theirs, theirs_over = [], [], [], [], [], []
            for _ in range(args.requests):
                start = time.perf_counter()
                policy.infer(obs)
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                codec.unpackb(codec.packb(request))
                codec_s.append(time.perf_counter() - start)
                result = child.infer(obs)
                ours.append(result.timing['total'] / MS)
                ours_over.append((result.timing['total'] - result.timing[TIME_SERVER]) / MS)
                start = time.perf_counter()
                response = openpi.infer(request)
                total = time.perf_counter() - start
                theirs.append(total)
                theirs_over.append(total - response['server_timing']['infer_ms'] / MS)
            print(f'  {count} camera(s), request {len(frame) / 1024:.0f} KiB:')
            print(f'    in-process infer         {stats(local)}')
            print(f'    msgpack encode+decode    {stats(codec_s)}')
            print(f'    RemotePolicy round trip  {stats(ours)}; overhead {stats(ours_over)}')
            print(f'    openpi-client round trip {stats(theirs)}; overhead {stats(theirs_over)} '
                  f'(goal <= {GOAL_MS} ms)')
    finally:
        child.close()


if __name__ == '__main__':
    main()
