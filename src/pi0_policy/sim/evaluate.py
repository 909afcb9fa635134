"""
Evaluate a policy on randomised transfer-cube episodes in the sim, without ROS (pure Python).

Each episode resets the sim to the cube pose of its seed and runs the policy in closed loop at
the control rate through the node's own chunk executor (``runtime.chunking``: sync, async,
ensemble or rtc), on simulated time: at a tick where the executor asks for a chunk, the policy
gets the top camera and the robot-order state (and, for rtc, the leftover of the current chunk and
the delay), and its chunk reaches the executor ``delay`` seconds of simulated time later (rounded
to control ticks), while the robot goes on with the current plan or holds. One inference is in
flight at a time, as in the node. The result does not depend on how fast this machine computes:
``delay`` is the whole inference latency. The score is gym-aloha's reward stage (highest per
episode), reported per stage, with the ticks held waiting for a chunk. The ROS 2 path
(``pi0_sim_demo --episodes N``) measures the same through the nodes, on the machine's own latency.

    python -m pi0_policy.sim.evaluate --checkpoint PATH --episodes 20
    python -m pi0_policy.sim.evaluate --checkpoint PATH --strategy sync rtc --delay 0 0.3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
import json
import pathlib
import sys
import time

import numpy as np

from pi0_policy.model.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, SCHEDULE_EXP, SCHEDULES
from pi0_policy.runtime.chunking import (
    available_strategies, make_executor, rtc_delay_problem)
from pi0_policy.runtime.config import ExecutionConfig
from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig, SimulationDiverged, TOP_CAMERA
from pi0_policy.sim.demonstrations import (
    DEFAULT_IMAGE_HEIGHT, DEFAULT_IMAGE_WIDTH, DEFAULT_PROMPT, ROBOT, robot_state,
    TOP_CAMERA_NAME)
from pi0_policy.sim.plan import checkpoint_demo_settings
from pi0_policy.sim.scripted import apply_command, EPISODE_STEPS, held_success, StageReport

# Seeds of evaluation episodes start here: far from the seeds the demonstrations used.
EVAL_FIRST_SEED = 100_000
DEFAULT_EXECUTE_STEPS = 25
DEFAULT_STRATEGY = 'sync'

# (observation dict, with the executor's extra request keys) -> (T, D) robot commands.
ChunkPolicy = Callable[[dict], np.ndarray]


@dataclass(frozen=True)
class Episode:
    """One closed-loop episode: the reward after every step and how execution went."""

    rewards: tuple[int, ...]
    # Inferences started.
    inferences: int
    # Ticks held waiting for a chunk after the first command (the robot paused).
    pauses: int
    # The physics diverged (wild commands): the episode ended there, as a failure.
    diverged: bool = False


def check_delay(delay: float) -> float:
    """
    Return ``delay`` if it is an inference delay in seconds (finite, >= 0).

    Raises:
        ValueError: ``delay`` is negative or not finite.

    """
    if not (np.isfinite(delay) and delay >= 0):
        raise ValueError(f'The inference delay must be a finite number of seconds >= 0; got '
                         f'{delay!r}.')
    return delay


def delay_ticks(delay: float, control_rate_hz: float) -> int:
    """
    Return an inference delay in whole control ticks (rounded to the nearest).

    Raises:
        ValueError: ``delay`` is negative or not finite.

    """
    return int(round(check_delay(delay) * control_rate_hz))


def run_episode(sim: AlohaSim, policy: ChunkPolicy, adapter: object, seed: int,
                execution: ExecutionConfig, *, delay: float = 0.0, steps: int = EPISODE_STEPS,
                prompt: str = DEFAULT_PROMPT) -> Episode:
    """
    Run one closed-loop episode on simulated time through the executor ``execution`` names.

    Args:
        sim: The sim (reset to ``seed`` here).
        policy: Observation -> (T, D) robot commands.
        adapter: The ALOHA embodiment adapter (state order).
        seed: Cube pose seed.
        execution: Strategy and its tunables; its control rate is the tick rate.
        delay: Seconds of simulated time from the observation to the chunk's arrival.
        steps: Control ticks.
        prompt: The instruction.

    Returns:
        The episode; one whose physics diverged ends at that step (``diverged``).

    Raises:
        ValueError: ``delay`` is negative.

    """
    lag = delay_ticks(delay, execution.control_rate_hz)
    executor = make_executor(execution)
    sim.reset(seed)
    rewards: list[int] = []
    # The chunk in flight: (tick it arrives, actions, observation time).
    pending: tuple[int, np.ndarray, float] | None = None
    inferences = pauses = 0
    commanded = False
    for tick in range(steps):
        now = tick * execution.dt
        if pending is None and executor.needs_inference(now):
            observation = {'images': {TOP_CAMERA_NAME: sim.render(TOP_CAMERA)},
                           'state': robot_state(sim, adapter), 'prompt': prompt,
                           **executor.request_extras(now)}
            pending = (tick + lag, policy(observation), now)
            inferences += 1
        if pending is not None and pending[0] <= tick:
            executor.add_chunk(pending[1], pending[2], inferences)
            pending = None
        action = executor.next_action(now)
        if action is None:
            pauses += commanded  # the sim keeps its last targets: the robot holds
        else:
            apply_command(sim, action)
            commanded = True
        try:
            sim.step()
        except SimulationDiverged:
            return Episode(tuple(rewards), inferences, pauses, diverged=True)
        rewards.append(sim.reward())
    return Episode(tuple(rewards), inferences, pauses)


@dataclass(frozen=True)
class CellResult:
    """The episodes of one (strategy, delay) cell."""

    strategy: str
    delay: float
    report: StageReport
    inferences: int
    pauses: int
    # Episodes whose physics diverged (counted as failures).
    diverged: int = 0

    def as_dict(self) -> dict:
        """Return a JSON-serialisable summary."""
        return {'strategy': self.strategy, 'delay_s': self.delay, 'inferences': self.inferences,
                'pauses': self.pauses, 'diverged': self.diverged, **self.report.as_dict()}


def evaluate(policy: ChunkPolicy, seeds: Sequence[int], execution: ExecutionConfig,
             sim: AlohaSim, adapter: object, *, delay: float = 0.0,
             steps: int = EPISODE_STEPS, prompt: str = DEFAULT_PROMPT,
             log: Callable[[str], None] | None = print) -> CellResult:
    """Run one episode per seed with one strategy and delay in ``sim``; return the stages."""
    episodes = []
    for seed in seeds:
        episode = run_episode(sim, policy, adapter, seed, execution, delay=delay, steps=steps,
                              prompt=prompt)
        episodes.append(episode)
        if log:
            log(f'{execution.strategy} delay {delay:.3f} s seed {seed}: max reward '
                f'{max(episode.rewards, default=0)}, success held: '
                f'{held_success(episode.rewards)}, pauses {episode.pauses}'
                + (', physics diverged' if episode.diverged else ''))
    return CellResult(execution.strategy, delay,
                      StageReport.from_rewards([e.rewards for e in episodes]),
                      sum(e.inferences for e in episodes), sum(e.pauses for e in episodes),
                      sum(e.diverged for e in episodes))


def checkpoint_policy(checkpoint: str | None, *, asset_id: str | None = None, seed: int = 0,
                      num_steps: int = 10, **rtc: object) -> tuple[ChunkPolicy, int]:
    """
    Load a checkpoint (None: the random tiny model) as an observation -> chunk function.

    Args:
        checkpoint: Checkpoint folder, or None.
        asset_id: Norm-stats asset (None: the robot config's).
        seed: Seed of the sampling noise.
        num_steps: Denoising steps.
        rtc: ``rtc_schedule`` / ``rtc_max_guidance_weight`` of ``Pi0Policy.from_checkpoint``.

    Returns:
        The function and the chunk length H.
    """
    from pi0_policy.runtime.policy import Pi0Policy
    policy = Pi0Policy.from_checkpoint(checkpoint, ROBOT, asset_id=asset_id, seed=seed,
                                       num_steps=num_steps, **rtc)
    return (lambda observation: policy.infer(observation).actions), policy.action_horizon


def table(cells: Sequence[CellResult]) -> str:
    """Return a markdown table of the cells: success per stage, pauses, diverged episodes."""
    lines = ['| strategy | delay (ms) | success | held | lifted | touched | pauses/episode | '
             'diverged |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    for cell in cells:
        report, n = cell.report, max(cell.report.episodes, 1)
        lines.append(f'| {cell.strategy} | {cell.delay * 1000:.0f} | {report.success_rate:.0%} '
                     f'| {report.held_rate:.0%} | {report.stage_rate(2):.0%} '
                     f'| {report.stage_rate(1):.0%} | {cell.pauses / n:.1f} | {cell.diverged} |')
    return '\n'.join(lines)


def _seconds(text: str) -> float:
    """Parse a --delay value (seconds >= 0) or fail with argparse's usage message."""
    try:
        return check_delay(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint per strategy and delay; print (and optionally write) the stages."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint folder (default: the random tiny model)')
    parser.add_argument('--asset-id', default=None, help='norm-stats asset of the checkpoint')
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=EVAL_FIRST_SEED, help='first cube seed')
    parser.add_argument('--strategy', nargs='+', choices=available_strategies(), default=None,
                        help="chunk strategies (default: the checkpoint's demo.json, else "
                             f'{DEFAULT_STRATEGY})')
    parser.add_argument('--delay', nargs='+', type=_seconds, default=[0.0],
                        help='inference delays in seconds of simulated time (default 0)')
    parser.add_argument('--execute-steps', type=int, default=None,
                        help="sync/rtc execution horizon (default: the checkpoint's demo.json, "
                             f'else {DEFAULT_EXECUTE_STEPS})')
    parser.add_argument('--num-steps', type=int, default=10, help='denoising steps')
    parser.add_argument('--rtc-schedule', choices=SCHEDULES, default=SCHEDULE_EXP,
                        help='rtc: soft-mask schedule')
    parser.add_argument('--rtc-max-guidance-weight', type=float,
                        default=DEFAULT_MAX_GUIDANCE_WEIGHT, help='rtc: guidance clip beta')
    parser.add_argument('--out', type=pathlib.Path, default=None, help='write results JSON')
    parser.add_argument('--image-height', type=int, default=None,
                        help="top camera height (default: the checkpoint's demo.json, else "
                             f'{DEFAULT_IMAGE_HEIGHT})')
    parser.add_argument('--image-width', type=int, default=None,
                        help="top camera width (default: the checkpoint's demo.json, else "
                             f'{DEFAULT_IMAGE_WIDTH})')
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    start = time.perf_counter()
    # The camera size and execution the checkpoint was evaluated with (its demo.json).
    demo = checkpoint_demo_settings(args.checkpoint)
    sim_settings, settings = demo['sim'], demo['policy']
    image_height = int(args.image_height or sim_settings.get('image_height', DEFAULT_IMAGE_HEIGHT))
    image_width = int(args.image_width or sim_settings.get('image_width', DEFAULT_IMAGE_WIDTH))
    strategies = args.strategy or [settings.get('strategy', DEFAULT_STRATEGY)]
    execute_steps = int(args.execute_steps or settings.get('execute_steps',
                                                           DEFAULT_EXECUTE_STEPS))
    policy, horizon = checkpoint_policy(
        args.checkpoint, asset_id=args.asset_id, num_steps=args.num_steps,
        rtc_schedule=args.rtc_schedule, rtc_max_guidance_weight=args.rtc_max_guidance_weight)
    from embodiment_adapters import load_adapter
    adapter = load_adapter(ROBOT)
    base = ExecutionConfig(strategy=DEFAULT_STRATEGY,
                           control_rate_hz=adapter.config.control_rate_hz, horizon=horizon,
                           execute_steps=execute_steps, request_remaining=execute_steps)
    seeds = range(args.seed, args.seed + args.episodes)
    cells = []
    sim = AlohaSim(AlohaSimConfig(image_height=image_height, image_width=image_width))
    try:
        for strategy in strategies:
            for delay in args.delay:
                problem = rtc_delay_problem(delay_ticks(delay, base.control_rate_hz),
                                            execute_steps, horizon)
                if strategy == 'rtc' and problem:
                    print(f'warning: rtc at {delay} s: {problem}', file=sys.stderr)
                cell = evaluate(policy, seeds, replace(base, strategy=strategy), sim, adapter,
                                delay=delay)
                print(f'{strategy} delay {delay:.3f} s: {cell.report.describe()}')
                cells.append(cell)
    finally:
        sim.close()
    print(table(cells))
    if args.out:
        result = {'checkpoint': args.checkpoint, 'execute_steps': execute_steps,
                  'rtc_schedule': args.rtc_schedule,
                  'rtc_max_guidance_weight': args.rtc_max_guidance_weight,
                  'image_height': image_height, 'image_width': image_width,
                  'first_seed': args.seed, 'wall_s': time.perf_counter() - start,
                  'cells': [cell.as_dict() for cell in cells]}
        args.out.write_text(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
