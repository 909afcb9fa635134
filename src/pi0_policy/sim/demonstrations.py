"""
Record scripted transfer-cube demonstrations straight from the sim (pure Python, no rclpy).

The fast path for making training data: :mod:`pi0_policy.sim.scripted` plans each episode, the
joint-space sim replays it, and every control step yields what a robot recording holds -- the
top camera image and the robot-order state *before* the command, and the command itself (ALOHA
robot order and units). The same episodes can be driven through ROS 2 instead (the scripted
teleop node and the recorder); this path skips DDS for speed.

Episodes are kept only when they reach the final reward stage, unless asked otherwise; the
success rate of the scripted controller itself is reported either way.

``python -m pi0_policy.sim.demonstrations --episodes 40 --out DIR`` writes the kept episodes into
a LeRobotDataset (``pi0_policy.data``; frames at the 50 Hz control rate, the top camera as
``cam_high``) and ``scripted_report.json`` (per-stage rates of the controller).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
import json
import pathlib
import time

from embodiment_adapters import EmbodimentAdapter, load_adapter
import numpy as np

from pi0_policy.data.layout import DatasetSpec
from pi0_policy.data.writer import DatasetWriter

from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig, SIDES, TOP_CAMERA
from pi0_policy.sim.scripted import (
    apply_command, EndEffectorScene, EPISODE_STEPS, held_success, plan_transfer_cube,
    StageReport)

ROBOT = 'aloha'
# Robot-config camera that the sim's top camera stands in for.
TOP_CAMERA_NAME = 'cam_high'
DEFAULT_PROMPT = 'transfer the cube to the other arm'
# The scripted controller's own success, written next to the dataset folder's meta/.
REPORT_FILE = 'scripted_report.json'
CONTROL_PERIOD = 0.02
# Rendered top-camera size: small, since the small demo model sees 96 x 96 anyway.
DEFAULT_IMAGE_HEIGHT = 96
DEFAULT_IMAGE_WIDTH = 128


@dataclass(frozen=True)
class EpisodeRecord:
    """One recorded episode at the control rate (T steps)."""

    # Seed of the cube pose.
    seed: int
    # (T, H, W, 3) uint8 top-camera images, each taken before the step's command.
    images: np.ndarray
    # (T, S) robot-order states (adapter.state_names) before the step's command.
    state: np.ndarray
    # (T, D) commands (adapter.action_names order, robot units).
    actions: np.ndarray
    # (T,) reward stage after each step.
    rewards: np.ndarray
    # Instruction of the task.
    prompt: str = DEFAULT_PROMPT

    @property
    def max_reward(self) -> int:
        """Return the highest reward stage reached."""
        return int(self.rewards.max(initial=0))

    @property
    def success(self) -> bool:
        """Return whether the episode reached the final stage and held it (held_success)."""
        return held_success(self.rewards)


def dataset_spec(adapter: EmbodimentAdapter, image_height: int, image_width: int,
                 control_period: float = CONTROL_PERIOD) -> DatasetSpec:
    """Return the LeRobot dataset layout of recorded episodes (the top camera as cam_high)."""
    return DatasetSpec(fps=round(1.0 / control_period), robot_type=ROBOT,
                       state_names=tuple(adapter.state_names),
                       action_names=tuple(adapter.action_names),
                       cameras={TOP_CAMERA_NAME: (image_height, image_width)})


def write_episode(writer: DatasetWriter, record: EpisodeRecord) -> None:
    """Append one recorded episode to a LeRobot dataset (frames at the control rate)."""
    episode = writer.start_episode(record.prompt)
    try:
        for image, state, action in zip(record.images, record.state, record.actions):
            episode.add_frame(state, action, {TOP_CAMERA_NAME: image})
    except BaseException:
        episode.discard()
        raise
    episode.save({'seed': record.seed, 'max_reward': record.max_reward})


def robot_state(sim: AlohaSim, adapter: EmbodimentAdapter) -> np.ndarray:
    """Return the sim's state in the adapter's robot order (as the ROS topics would give it)."""
    names, positions = [], []
    for side in SIDES:
        arm = sim.joint_state(side)
        names += [f'{side}_{n}' for n in arm.names]
        positions += list(arm.positions)
    return adapter.state_from_joint_states(names, positions)


def record_episode(sim: AlohaSim, scene: EndEffectorScene, adapter: EmbodimentAdapter,
                   seed: int, steps: int = EPISODE_STEPS,
                   prompt: str = DEFAULT_PROMPT) -> EpisodeRecord:
    """Plan the episode of ``seed``, replay it in ``sim`` and record every step."""
    episode = plan_transfer_cube(seed, steps, scene=scene, sim=sim)
    commands = episode.commands(sim.config.gripper)
    sim.reset(seed)
    images, states, rewards = [], [], []
    for command in commands:
        images.append(sim.render(TOP_CAMERA))
        states.append(robot_state(sim, adapter))
        apply_command(sim, command)
        sim.step()
        rewards.append(sim.reward())
    return EpisodeRecord(seed=seed, images=np.stack(images), state=np.stack(states),
                         actions=commands.astype(np.float64), rewards=np.array(rewards),
                         prompt=prompt)


def scripted_episodes(seeds: range, *, image_height: int = DEFAULT_IMAGE_HEIGHT,
                      image_width: int = DEFAULT_IMAGE_WIDTH, steps: int = EPISODE_STEPS,
                      prompt: str = DEFAULT_PROMPT) -> Iterator[EpisodeRecord]:
    """Yield the recorded episode of every seed (successful or not)."""
    adapter = load_adapter(ROBOT)
    sim = AlohaSim(AlohaSimConfig(image_height=image_height, image_width=image_width))
    scene = EndEffectorScene()
    try:
        for seed in seeds:
            yield record_episode(sim, scene, adapter, seed, steps, prompt)
    finally:
        scene.close()
        sim.close()


def main(argv: list[str] | None = None) -> int:
    """Record scripted episodes into a LeRobot dataset and print the controller's success."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--episodes', type=int, default=40,
                        help='episodes to keep (default %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='first cube-pose seed')
    parser.add_argument('--max-attempts', type=int, default=0,
                        help='stop after this many episodes even if fewer succeeded '
                        '(default: 3 x --episodes)')
    parser.add_argument('--out', type=pathlib.Path, required=True,
                        help='LeRobot dataset folder (created, or extended if it exists)')
    parser.add_argument('--keep-failed', action='store_true',
                        help='also keep episodes that do not reach the final stage')
    parser.add_argument('--image-height', type=int, default=DEFAULT_IMAGE_HEIGHT)
    parser.add_argument('--image-width', type=int, default=DEFAULT_IMAGE_WIDTH)
    args = parser.parse_args(argv)
    attempts = args.max_attempts or 3 * args.episodes
    adapter = load_adapter(ROBOT)
    writer = DatasetWriter(args.out, dataset_spec(adapter, args.image_height, args.image_width))
    kept, rewards, start = [], [], time.perf_counter()  # rewards: per episode, per step
    for record in scripted_episodes(range(args.seed, args.seed + attempts),
                                    image_height=args.image_height,
                                    image_width=args.image_width):
        rewards.append(record.rewards.tolist())
        if record.success or args.keep_failed:
            write_episode(writer, record)
            kept.append(record.seed)
        print(f'seed {record.seed}: max reward {record.max_reward}, success held '
              f'{record.success}, kept {len(kept)}/{args.episodes}', flush=True)
        if len(kept) >= args.episodes:
            break
    report = StageReport.from_rewards(rewards)
    summary = {'scripted_controller': report.as_dict(), 'kept_seeds': kept,
               'keep_failed': args.keep_failed, 'image_size': [args.image_height,
                                                               args.image_width],
               'wall_s': time.perf_counter() - start}
    (args.out / REPORT_FILE).write_text(json.dumps(summary, indent=2) + '\n')
    print(f'scripted controller: {report.describe()}; kept {len(kept)} episodes in {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
