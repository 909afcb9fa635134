"""
Benchmark the throughput of one ``pi0-policy serve`` with 1, 2 and 4 concurrent clients.

The server (tiny random π0, robot aloha) runs as a child process, once with ``--max-batch 1``
(one request per model call) and once with batching (``--max-batch 8``: requests queued while the
model runs go into the next call together). Each client is openpi-client's
``WebsocketClientPolicy`` in its own thread, sending one 224x224 camera per request back to back.
Printed: requests per second over all clients, the mean batch size and the per-request latency;
the two servers run side by side and are measured alternately, so that a change in the load of a
shared machine hits both. First, without the network: the time of one model call on a batch of
4 observations vs 4 single calls (``Pi0Policy.infer_batch``).
Run: ``python benchmarks/serve_throughput.py [--seconds 10]``.
"""

import argparse
import pathlib
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from embodiment_adapters import load_adapter  # noqa: E402, I100
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402
from pi0_policy.runtime.policy import Pi0Policy  # noqa: E402
from pi0_policy.serving.child import SubprocessPolicy  # noqa: E402
from pi0_policy.serving.formats import ObservationMapping, serving_for  # noqa: E402

ROBOT = 'aloha'
SIDE = 224
CLIENTS = (1, 2, 4)
MAX_BATCHES = (1, 8)
BATCH = 4
REPEATS = 10
MS = 1000.0


def model_batching(adapter, observation: dict, threads: int) -> None:
    """Print one batched model call against single calls, in this process."""
    import torch
    torch.set_num_threads(threads)
    policy = Pi0Policy.from_checkpoint(None, adapter)
    policy.warmup()
    single, batched = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(BATCH):
            policy.infer(observation)
        single.append(time.perf_counter() - start)
        start = time.perf_counter()
        policy.infer_batch([observation] * BATCH)
        batched.append(time.perf_counter() - start)
    print(f'  model only: {BATCH} single calls p50 {np.median(single) * MS:.1f} ms, one batch of '
          f'{BATCH} p50 {np.median(batched) * MS:.1f} ms '
          f'({np.median(single) / np.median(batched):.2f}x)')
    policy.close()


def run_clients(url: str, key: str, request: dict, clients: int, seconds: float) -> dict:
    """Let ``clients`` threads send requests back to back for ``seconds``; return statistics."""
    policies = [WebsocketClientPolicy(url, api_key=key) for _ in range(clients)]
    for p in policies:
        p.infer(request)  # connect and warm up
    latencies: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop(policy) -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            response = policy.infer(request)
            with lock:
                latencies.append(time.perf_counter() - start)
                batches.append(response['server_timing']['batch_size'])
    threads = [threading.Thread(target=loop, args=(p,)) for p in policies]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    return {'rps': len(latencies) / elapsed, 'batch': float(np.mean(batches)),
            'p50': np.percentile(latencies, 50) * MS, 'p99': np.percentile(latencies, 99) * MS}


def main() -> None:
    """Measure each client count with and without batching and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--threads', type=int, default=1, help="server's torch threads")
    args = parser.parse_args()
    adapter = load_adapter(ROBOT)
    rng = np.random.default_rng(0)
    observation = {'images': {'cam_high': rng.integers(0, 256, (SIDE, SIDE, 3), np.uint8)},
                   'state': np.zeros(len(adapter.state_names)), 'prompt': 'transfer the cube'}
    request = ObservationMapping(adapter, serving_for(ROBOT)).to_request(observation)
    print(f'throughput of one server, robot {ROBOT}, 1 camera {SIDE}x{SIDE}, tiny model, '
          f'torch threads {args.threads}, {args.seconds:.0f} s per run:')
    model_batching(adapter, observation, args.threads)
    print(f'  {"max_batch":>9} {"clients":>7} {"req/s":>7} {"mean batch":>10} '
          f'{"p50 ms":>8} {"p99 ms":>8}')
    children = {b: SubprocessPolicy(adapter, ROBOT, ['--torch-threads', str(args.threads),
                                                     '--max-batch', str(b)])
                for b in MAX_BATCHES}
    try:
        for clients in CLIENTS:
            for max_batch, child in children.items():
                url = child.remote.url.replace('ws://', '')
                r = run_clients(url, child.api_key, request, clients, args.seconds)
                print(f'  {max_batch:>9} {clients:>7} {r["rps"]:7.1f} {r["batch"]:10.2f} '
                      f'{r["p50"]:8.1f} {r["p99"]:8.1f}', flush=True)
    finally:
        for child in children.values():
            child.close()


if __name__ == '__main__':
    main()
