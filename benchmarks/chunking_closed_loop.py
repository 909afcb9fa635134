"""
Closed-loop benchmark of the chunk strategies on the simulated ALOHA through the real ROS 2 path.

For every strategy (sync, async, ensemble, rtc) and every injected inference delay (added to each
inference by the node's ``inference_delay_s`` parameter), the MuJoCo ALOHA sim node (its own
process, ``aloha_sim_node``, started once) and the real ``pi0_policy_node`` (in this process; tiny
random π0 unless ``--checkpoint``) run together over loopback DDS in real time for ``--seconds``.
Each cell starts with a new sim episode (the sim's ``reset_episode``: the next cube pose, the
arms at the start pose), so that no cell inherits the state an earlier one left. The actions the
strategy asks for at each control tick (before the safety filter) are recorded and reduced to:

- chunk-boundary discontinuity: the jump of the commanded joint positions (rad, max over joints)
  at every tick whose action comes from a newer chunk than the previous tick's; max and RMS;
- plan disagreement at the switch: the new chunk's action minus the action the old chunk had
  planned for the same tick (rad, max over joints), RMS over switches: what RTC inpaints;
- step RMS: the same per-tick change within a chunk (the scale a seamless switch would have);
- jerk RMS: third difference of the commanded positions over the control period (rad/s^3);
- pauses: ticks held waiting for a chunk (after the first command);
- achieved control rate (commands per second).

Prints a markdown table and writes ``--out`` (JSON) and ``--plot`` (PNG). With a random model the
chunks are unrelated to each other, which makes the boundary jumps of naive switching large: it
measures stitching, not task success; ``--checkpoint`` runs a trained policy on the cameras it was
trained on. Task success per strategy and delay, over many episodes on simulated time (the same
executors, no DDS, independent of this machine's speed): ``python -m pi0_policy.sim.evaluate
--strategy sync async ensemble rtc --delay 0 0.1 0.2 0.3``. Run: ``python
benchmarks/chunking_closed_loop.py [--seconds 8] [--delays 0 0.1 0.2 0.3] [--strategies sync async
ensemble rtc] [--checkpoint checkpoints/pi0_aloha_sim_small]``.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from pi0_policy.ros.policy_node import GIL_SWITCH_INTERVAL, PolicyNode  # noqa: E402, I100
from pi0_policy.ros.spinner import Spinner  # noqa: E402
from pi0_policy.sim.plan import (  # noqa: E402
    checkpoint_demo_settings, DEFAULT_PROMPT, SIM_NODE_NAME)

STRATEGIES = ('sync', 'async', 'ensemble', 'rtc')
DELAYS = (0.0, 0.1, 0.2, 0.3)  # seconds added to every inference
ROBOT = 'aloha'
# Seconds to wait for the first chunk (sim start-up), then before recording starts.
FIRST_CHUNK_TIMEOUT_S = 60.0
SETTLE_S = 2.0
# Execution horizon s of sync and rtc (chunk actions), and async's request threshold.
EXECUTE_STEPS = 25
# Inputs older than this are stale (the sim renders at CAMERA_RATE_HZ on a loaded CPU).
MAX_AGE_S = 1.0
CAMERA_RATE_HZ = 5.0
IMAGE_HW = (120, 160)
EXECUTOR_THREADS = 4
SIM_RESET_SERVICE = f'/{SIM_NODE_NAME}/reset_episode'
MS = 1000.0


class Recorder:
    """Wrap a chunk executor's next_action: record (time, action, chunk sequence) per tick."""

    def __init__(self, executor) -> None:
        """Start recording ``executor`` (its next_action is replaced)."""
        self.rows: list[tuple[float, np.ndarray | None, int]] = []
        # Per switch: (new action, the old chunk's planned action for that tick).
        self.switches: list[tuple[np.ndarray, np.ndarray]] = []
        self.recording = False
        inner = executor.next_action

        def next_action(now: float):
            last = executor._last  # (chunk, index, tick time) of the previous action
            action = inner(now)
            if self.recording:
                sequence = executor.progress.sequence
                self.rows.append((now, None if action is None else np.array(action), sequence))
                if action is not None and last is not None and last[0].sequence != sequence:
                    old = last[0].actions
                    self.switches.append((np.array(action), old[min(last[1] + 1, len(old) - 1)]))
            return action
        executor.next_action = next_action


def metrics(recorder: Recorder, position_dims: np.ndarray, dt: float, seconds: float) -> dict:
    """Reduce the recorded ticks to the benchmark's numbers."""
    rows = recorder.rows
    gaps = [float(np.abs(new - old)[position_dims].max()) for new, old in recorder.switches]
    started = next((i for i, r in enumerate(rows) if r[1] is not None), len(rows))
    rows = rows[started:]
    pauses = sum(1 for r in rows if r[1] is None)
    acted = [(t, a[position_dims], s) for t, a, s in rows if a is not None]
    jumps, steps, jerks = [], [], []
    for (_, a0, s0), (_, a1, s1) in zip(acted, acted[1:]):
        (jumps if s1 != s0 else steps).append(float(np.abs(a1 - a0).max()))
    positions = np.array([a for _, a, _ in acted]) if acted else np.zeros((0, 1))
    if len(positions) >= 4:
        jerks = np.diff(positions, n=3, axis=0) / dt ** 3
    return {
        'switches': len(jumps),
        'jump_max': max(jumps) if jumps else math.nan,
        'jump_rms': float(np.sqrt(np.mean(np.square(jumps)))) if jumps else math.nan,
        'step_rms': float(np.sqrt(np.mean(np.square(steps)))) if steps else math.nan,
        'plan_gap_rms': float(np.sqrt(np.mean(np.square(gaps)))) if gaps else math.nan,
        'jerk_rms': float(np.sqrt(np.mean(np.square(jerks)))) if len(jerks) else math.nan,
        'pauses': pauses,
        'rate_hz': len(acted) / seconds,
    }


def reset_sim(node: Node) -> None:
    """Start the sim's next episode (new cube pose, arms at the start) and wait for the answer."""
    client = node.create_client(Trigger, SIM_RESET_SERVICE)
    try:
        if not client.wait_for_service(timeout_sec=FIRST_CHUNK_TIMEOUT_S):
            raise RuntimeError(f'{SIM_RESET_SERVICE} did not appear: is the sim node running?')
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + FIRST_CHUNK_TIMEOUT_S
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not future.done() or not future.result().success:
            raise RuntimeError(f'{SIM_RESET_SERVICE} did not reset the sim.')
    finally:
        node.destroy_client(client)


def run_cell(strategy: str, delay: float, seconds: float, checkpoint: str,
             rate_hz: float, prompt: str) -> dict:
    """Run the policy node against the running sim for one (strategy, delay); return metrics."""
    node = PolicyNode(parameter_overrides=[
        Parameter('robot', value=ROBOT), Parameter('checkpoint', value=checkpoint),
        Parameter('prompt', value=prompt),
        Parameter('strategy', value=strategy), Parameter('inference_delay_s', value=delay),
        Parameter('execute_steps', value=EXECUTE_STEPS),
        Parameter('request_remaining', value=EXECUTE_STEPS),
        Parameter('control_rate_hz', value=rate_hz), Parameter('max_age', value=MAX_AGE_S),
        Parameter('preview', value=False)])
    executor = Spinner(EXECUTOR_THREADS, lambda error: print(f'callback raised: {error!r}'))
    executor.add_node(node)
    executor.start()
    try:
        node.trigger_configure()
        ctl = node._ctl
        if ctl is None:
            raise RuntimeError(f'{strategy}: the policy node failed to configure.')
        recorder = Recorder(ctl.executor)
        adapter = ctl.adapter
        position_dims = np.flatnonzero(~np.asarray(adapter.is_velocity, bool))
        reset_sim(node)  # every cell starts a new episode from the start pose
        node.trigger_activate()
        deadline = time.monotonic() + FIRST_CHUNK_TIMEOUT_S
        while ctl.executor.stats.chunks_received == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the sim starts once, slowly
        time.sleep(SETTLE_S)
        recorder.recording = True
        time.sleep(seconds)
        recorder.recording = False
        stats = ctl.executor.stats
        latency = stats.latency
    finally:
        executor.stop()
        node.close()
        node.destroy_node()
    out = metrics(recorder, position_dims, 1.0 / rate_hz, seconds)
    out.update(strategy=strategy, delay_s=delay, chunks=stats.chunks_received,
               latency_ms=None if latency is None else latency * MS, delay_steps=stats.delay_ticks)
    return out


def table(results: list[dict]) -> str:
    """Return the results as a markdown table."""
    lines = ['| strategy | delay (ms) | jump max (rad) | jump RMS (rad) | plan gap RMS (rad) | '
             'step RMS (rad) | jerk RMS (rad/s³) | pauses (ticks) | rate (Hz) | chunks | '
             'latency (ms) |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in results:
        latency = '-' if r['latency_ms'] is None else f"{r['latency_ms']:.0f}"
        lines.append(
            f"| {r['strategy']} | {r['delay_s'] * MS:.0f} | {r['jump_max']:.3f} | "
            f"{r['jump_rms']:.3f} | {r['plan_gap_rms']:.3f} | {r['step_rms']:.3f} | "
            f"{r['jerk_rms']:.0f} | {r['pauses']} | {r['rate_hz']:.1f} | "
            f"{r['chunks']} | {latency} |")
    return '\n'.join(lines)


def plot(results: list[dict], path: pathlib.Path) -> None:
    """Plot jump RMS, jerk RMS and pauses against the delay, one line per strategy."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, ax, label in (('plan_gap_rms', axes[0], 'plan gap at switch, RMS (rad)'),
                           ('jerk_rms', axes[1], 'jerk RMS (rad/s³)'),
                           ('pauses', axes[2], 'pauses (ticks held)')):
        for strategy in STRATEGIES:
            rows = [r for r in results if r['strategy'] == strategy]
            if rows:
                ax.plot([r['delay_s'] * MS for r in rows], [r[key] for r in rows], 'o-',
                        label=strategy)
        ax.set_xlabel('injected delay (ms)')
        ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def start_sim(rate_hz: float, checkpoint: str) -> subprocess.Popen:
    """
    Start the ALOHA sim node in its own process, in real time.

    Small images and slow cameras for the random model; a trained checkpoint gets the cameras
    it was trained on (its ``demo.json``, as the demo renders them).
    """
    command = [sys.executable, '-m', 'pi0_policy.ros.sim.sim_node']
    params = {'robot': ROBOT, 'camera_rate_hz': CAMERA_RATE_HZ, 'image_height': IMAGE_HW[0],
              'image_width': IMAGE_HW[1], 'control_rate_hz': rate_hz,
              **checkpoint_demo_settings(checkpoint)['sim']}
    command += ['--ros-args'] + [a for k, v in params.items() for a in ('-p', f'{k}:={v}')]
    env = os.environ.copy()  # the sim runs this checkout's code, as the node does
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT / 'src'), env.get('PYTHONPATH', '')])
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    """Run every (strategy, delay) cell and report."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--seconds', type=float, default=8.0, help='recorded seconds per cell')
    parser.add_argument('--delays', type=float, nargs='+', default=list(DELAYS))
    parser.add_argument('--strategies', nargs='+', default=list(STRATEGIES),
                        choices=STRATEGIES)
    parser.add_argument('--checkpoint', default='', help='pi0 checkpoint (default: tiny random)')
    parser.add_argument('--rate', type=float, default=50.0, help='control rate (Hz)')
    parser.add_argument('--prompt', default=DEFAULT_PROMPT, help='task instruction')
    parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('closed_loop.json'))
    parser.add_argument('--plot', type=pathlib.Path, default=pathlib.Path('closed_loop.png'))
    args = parser.parse_args(argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    rclpy.init()
    sim = start_sim(args.rate, args.checkpoint)
    results = []
    try:
        for strategy in args.strategies:
            for delay in args.delays:
                result = run_cell(strategy, delay, args.seconds, args.checkpoint, args.rate,
                                  args.prompt)
                print(f"{strategy:>8} {delay * MS:4.0f} ms: jump max {result['jump_max']:.3f} "
                      f"rms {result['jump_rms']:.3f} rad, jerk rms {result['jerk_rms']:.0f}, "
                      f"pauses {result['pauses']}, {result['rate_hz']:.1f} Hz, "
                      f"{result['chunks']} chunks", flush=True)
                results.append(result)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        rclpy.try_shutdown()
    print(table(results))
    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.plot)
    print(f'wrote {args.out} and {args.plot}')


if __name__ == '__main__':
    main()
