"""
Write the report of a simulated demo run: joint plot, camera video, summary.json and a printout.

Pure Python (no rclpy): the ROS side (:mod:`pi0_policy.ros.sim.demo`) records the run and passes
plain values here. Plots use matplotlib's Agg backend and videos imageio, both imported on first
use.

Records are ``{action name: [(seconds since start, value), ...]}``.
"""

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import json
import math
import pathlib
from typing import Any

import numpy as np

SUMMARY_FILE = 'summary.json'
PLOT_FILE = 'joints.png'
VIDEO_STEM = 'top_camera'
VIDEO_FORMATS = ('mp4', 'gif')
# Commands may touch a limit exactly; anything beyond it by more than this counts (robot units).
LIMIT_TOLERANCE = 1e-9
MS = 1000.0
PERCENTILES = (50.0, 99.0)
PLOT_DPI = 100
PLOT_COLUMN_INCHES = 6.0
PLOT_ROW_INCHES = 1.9
# Lower bound of a run's duration when dividing by it (seconds): no division by zero.
MIN_WALL = 1e-9
# Video frame rate never below this (frames per second).
MIN_FPS = 1.0

# Action name -> [(seconds since start, value)].
Records = Mapping[str, Sequence[tuple[float, float]]]
# Counters of the sim node's statistics (pi0_policy.ros.sim.sim_node.AlohaSimNode.stats), reported
# over the recorded window only (the sim also counts while the pi0 node loads).
SIM_COUNTERS = ('steps', 'lag_events', 'commands', 'rejected', 'frames', 'lockstep_waits',
                'lockstep_wait_s', 'diverged', 'sim_time', 'wall_time')


@dataclass
class DemoResult:
    """What a run produced: the summary and the raw records behind it."""

    summary: dict[str, Any]
    # Action name -> [(seconds since start, commanded value)], every commanded value.
    commands: dict[str, list[tuple[float, float]]]
    # Action name -> [(seconds since start, measured value)] (gripper: the gripper joint).
    measured: dict[str, list[tuple[float, float]]]
    # Commanded values outside the robot config's limits: (action name, value).
    violations: list[tuple[str, float]]


def limit_violations(adapter: Any, commands: Records) -> list[tuple[str, float]]:
    """Return every commanded (name, value) outside the adapter's [lower, upper]."""
    bounds = dict(zip(adapter.action_names, zip(adapter.lower, adapter.upper)))
    out = []
    for name, samples in commands.items():
        low, high = bounds.get(name, (-math.inf, math.inf))
        out += [(name, value) for _, value in samples
                if not low - LIMIT_TOLERANCE <= value <= high + LIMIT_TOLERANCE]
    return out


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Return ``{'p50': ms, 'p99': ms}`` of durations given in seconds (NaN when empty)."""
    if not seconds:
        return {f'p{p:g}': math.nan for p in PERCENTILES}
    return {f'p{p:g}': float(np.percentile(np.asarray(seconds) * MS, p)) for p in PERCENTILES}


def joint_motion(names: Sequence[str], measured: Records) -> dict[str, float]:
    """Return the range (max - min) of every measured action in ``names`` that has samples."""
    return {n: float(np.ptp([v for _, v in measured[n]]))
            for n in names if measured.get(n)}


def write_plot(path: pathlib.Path, names: Sequence[str], commands: Records,
               measured: Records) -> None:
    """Plot commanded (dashed) vs measured (solid) position of every action over time."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    columns = 2
    rows = math.ceil(len(names) / columns)
    figure, axes = pyplot.subplots(rows, columns, sharex=True, squeeze=False,
                                   figsize=(PLOT_COLUMN_INCHES * columns, PLOT_ROW_INCHES * rows))
    for k, name in enumerate(names):
        # Column per arm when the names split evenly (ALOHA: left 7, right 7).
        ax = axes[k % rows, k // rows]
        for data, style, label in ((measured.get(name), '-', 'measured'),
                                   (commands.get(name), '--', 'commanded')):
            if data:
                t, v = np.asarray(data).T
                ax.plot(t, v, style, label=label, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel('time since start (s)')
    axes[0, 0].legend(fontsize=8, loc='best')
    figure.suptitle('pi0 on the simulated ALOHA: commanded vs measured (rad)')
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    pyplot.close(figure)


def write_video(path: pathlib.Path, frames: Sequence[np.ndarray], fps: float) -> pathlib.Path:
    """Write ``frames`` ((H, W, 3) uint8 each) as MP4, or GIF when MP4 cannot be written."""
    import imageio.v2 as imageio
    if path.suffix == '.mp4':
        try:
            imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
            return path
        except (ImportError, OSError, RuntimeError, ValueError):
            path = path.with_suffix('.gif')  # no ffmpeg here: fall back to a GIF
    imageio.mimwrite(path, frames, duration=MS / fps, loop=0)
    return path


def write_media(out: pathlib.Path, names: Sequence[str], commands: Records, measured: Records,
                frames: Sequence[np.ndarray], wall: float, video_format: str
                ) -> pathlib.Path | None:
    """
    Write ``PLOT_FILE`` and, when there are frames, the top-camera video into ``out``.

    Args:
        out: output folder (exists).
        names: actions to plot, in robot order.
        commands: commanded values per action.
        measured: measured values per action.
        frames: camera frames, (H, W, 3) uint8 each, spread over ``wall`` seconds.
        wall: seconds recorded.
        video_format: 'mp4' or 'gif' (an MP4 falls back to GIF without ffmpeg).

    Returns:
        The video written, or None without frames.

    """
    write_plot(out / PLOT_FILE, names, commands, measured)
    if not frames:
        return None
    fps = max(MIN_FPS, len(frames) / max(wall, MIN_WALL))
    return write_video(out / f'{VIDEO_STEM}.{video_format}', frames, fps)


def policy_summary(status: Any | None, states_seen: dict[str, int]) -> dict[str, Any]:
    """
    Return the summary of the pi0 node's last status (zeros when none came).

    Args:
        status: the last ``pi0_msgs/PolicyStatus`` message (read by field name), or None.
        states_seen: status messages received per lifecycle state.

    Returns:
        Final state and detail, ticks, control rates, holds, clamps, inference failures.

    """
    return {
        'final_state': status.state_name if status else 'no status received',
        'final_detail': status.detail if status else '',
        'ticks': int(status.ticks) if status else 0,
        'control_rate_achieved_hz': float(status.control_rate_achieved) if status else 0.0,
        'control_rate_target_hz': float(status.control_rate_target) if status else 0.0,
        'hold_ticks': int(status.hold_ticks) if status else 0,
        'clamped_commands': int(status.clamped_commands) if status else 0,
        'inference_failures': int(status.inference_failures) if status else 0,
        'states_seen': dict(states_seen),
    }


def window_stats(first: Mapping[str, float], last: Mapping[str, float]) -> dict[str, float]:
    """
    Return the sim's statistics between two of its diagnostics reports.

    Args:
        first: The values reported when recording started (empty: count from the sim's start).
        last: The last values reported.

    Returns:
        ``last`` with every counter of ``SIM_COUNTERS`` as the difference, and ``step_rate_hz``
        and ``real_time_factor`` over the window.

    """
    out = dict(last)
    for key in SIM_COUNTERS:
        if key in last:
            out[key] = last[key] - first.get(key, 0.0)
    if 'wall_time' in out:
        wall = max(out['wall_time'], MIN_WALL)
        out['step_rate_hz'] = out.get('steps', 0.0) / wall
        out['real_time_factor'] = out.get('sim_time', 0.0) / wall
    return out


def build_summary(*, wall: float, run: Mapping[str, Any], policy: Mapping[str, Any],
                  latencies: Sequence[float], messages: Mapping[str, int], rate_topic: str,
                  violations: int, sim_stats: Mapping[str, float], motion: Mapping[str, float],
                  out: pathlib.Path, video: pathlib.Path | None) -> dict[str, Any]:
    """
    Assemble the summary of a run (the content of ``summary.json``).

    Args:
        wall: seconds recorded.
        run: ``checkpoint``, ``prompt`` and ``clock`` of the run, in that order, then
            optionally ``clock_reason``, ``strategy``, ``strategy_reason`` and ``calibration``
            (the measured sim cost that chose the clock, or None).
        policy: the pi0 node's final status (state, ticks, rates, holds, clamps, failures).
        latencies: inference latency of every chunk, seconds.
        messages: command messages per topic.
        rate_topic: the topic whose message rate is reported as ``rate_hz``.
        violations: number of commanded values outside the limits.
        sim_stats: the sim node's statistics over the run (see :func:`window_stats`).
        motion: measured range per action (see :func:`joint_motion`).
        out: output folder of the files.
        video: the video written, or None.

    Returns:
        The summary, a JSON-serialisable dict.

    """
    return {
        'duration_s': wall,
        **run,
        'policy': dict(policy),
        'inference': {'chunks': len(latencies),
                      **{f'latency_{k}_ms': v for k, v in percentiles_ms(latencies).items()}},
        'commands': {'messages': dict(messages),
                     'rate_hz': messages.get(rate_topic, 0) / max(wall, MIN_WALL),
                     'limit_violations': violations},
        'sim': sim_stats,
        'max_joint_motion_rad': max(motion.values(), default=0.0),
        'joint_motion': motion,
        'files': {'summary': str(out / SUMMARY_FILE), 'plot': str(out / PLOT_FILE),
                  'video': str(video) if video else None},
    }


def write_summary(summary: Mapping[str, Any], out: pathlib.Path) -> pathlib.Path:
    """Write ``summary`` as indented JSON to ``out / SUMMARY_FILE`` and return the path."""
    path = out / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, default=float) + '\n')
    return path


def log_summary(summary: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
    """Print the summary of :func:`build_summary` as a few readable lines through ``log``."""
    p, inf, cmd = summary['policy'], summary['inference'], summary['commands']
    sim = defaultdict(lambda: math.nan, summary['sim'])
    files = summary['files']
    log('pi0_sim_demo summary')
    log(f"  ran {summary['duration_s']:.1f} s ({summary['clock']}), "
        f"model: {summary['checkpoint']}")
    if 'strategy' in summary:
        log(f"  chunk strategy: {summary['strategy']}; clock chosen because "
            f"{summary.get('clock_reason', 'not given')}")
    log(f"  control ticks {p['ticks']}, achieved {p['control_rate_achieved_hz']:.1f} Hz of "
        f"{p['control_rate_target_hz']:.0f} Hz; commands {cmd['rate_hz']:.1f} msg/s per arm")
    log(f"  inference: {inf['chunks']} chunks, latency p50 {inf['latency_p50_ms']:.0f} ms, "
        f"p99 {inf['latency_p99_ms']:.0f} ms, failures {p['inference_failures']}")
    log(f"  safety: {p['clamped_commands']} commands clamped, {p['hold_ticks']} hold ticks, "
        f"{cmd['limit_violations']} commands outside limits; final state: {p['final_state']}")
    log(f"  sim: {sim['steps']:.0f} steps = {sim['sim_time']:.1f} s simulated "
        f"({sim['step_rate_hz']:.1f} Hz, real-time factor {sim['real_time_factor']:.2f}), "
        f"render {sim['render_ms_mean']:.1f} ms per image, {sim['lag_events']:.0f} lag events, "
        f"{sim['lockstep_waits']:.0f} waits for the pi0 node"
        + (f", physics diverged {sim['diverged']:.0f} times (new episode each)"
           if sim.get('diverged') else ''))
    log(f"  joints moved up to {summary['max_joint_motion_rad']:.3f} rad")
    log(f"  wrote {files['summary']}, {files['plot']}"
        + (f", {files['video']}" if files['video'] else ''))
