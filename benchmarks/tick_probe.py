"""Run the real policy node with a synthetic robot and record when each control tick starts."""

from dataclasses import dataclass
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from embodiment_adapters import load_robot_config, make_adapter  # noqa: E402, I100
import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from pi0_policy.ros.policy_node import GIL_SWITCH_INTERVAL, PolicyNode  # noqa: E402, I100
from pi0_policy.ros.sim.synthetic_robot import SyntheticRobot  # noqa: E402
from pi0_policy.ros.spinner import Spinner  # noqa: E402


@dataclass(frozen=True)
class TickRun:
    """Control-tick periods of one run (seconds) and what the node inferred meanwhile."""

    # (N,) seconds between consecutive tick starts (the first tick, start-up, is dropped).
    intervals: np.ndarray
    # Ticks the run should have had at the control rate.
    expected: float
    # Chunks queued and the median inference latency (s).
    chunks: int
    latency: float

    def missed(self) -> float:
        """Return the fraction of expected ticks that did not happen."""
        return max(self.expected - self.intervals.size, 0.0) / self.expected


def run_ticks(robot: str, seconds: float, image_hw: tuple[int, int],
              **parameters) -> TickRun:
    """Run ``pi0_policy_node`` (parameters as overrides) for ``seconds``; record its ticks."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)  # as policy_node.main() does
    rclpy.init()
    node = PolicyNode(parameter_overrides=[Parameter('robot', value=robot)] + [
        Parameter(name, value=value) for name, value in parameters.items()])
    bot = SyntheticRobot(make_adapter(load_robot_config(robot)), image_hw=image_hw)
    ticks: list[float] = []
    tick = node._on_control_tick

    def timed_tick() -> None:
        ticks.append(time.perf_counter())
        tick()
    node._on_control_tick = timed_tick  # record the start of every control callback
    executor = Spinner(4, lambda error: print(f'callback raised: {error!r}'))
    executor.add_node(node)
    executor.add_node(bot)
    executor.start()
    try:
        node.trigger_configure()
        node.trigger_activate()
        time.sleep(seconds)
        chunks, latency = node._ctl.sequence, node._status.latency.percentile(50)
        rate = node._config.execution.control_rate_hz
    finally:
        node.close()
        executor.stop()
        node.destroy_node()
        bot.destroy_node()
        rclpy.try_shutdown()
    return TickRun(intervals=np.diff(ticks[1:]), expected=(ticks[-1] - ticks[1]) * rate,
                   chunks=chunks, latency=latency)
