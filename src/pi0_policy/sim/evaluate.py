"""
Evaluate a policy on randomised transfer-cube episodes in the sim, without ROS (pure Python).

Each episode resets the sim to the cube pose of its seed and runs the policy in closed loop at
the control rate: every ``execute_steps`` steps (the node's ``sync`` strategy) the policy gets
the top camera and the robot-order state and returns a chunk of robot commands, whose first
``execute_steps`` are applied one per control period. The score is gym-aloha's reward stage
(highest per episode), reported per stage. The ROS 2 path (``pi0_sim_demo --episodes N``)
measures the same through the nodes.

    python -m pi0_policy.sim.evaluate --checkpoint PATH --episodes 20
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import json
import pathlib
import time

import numpy as np

from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig, TOP_CAMERA
from pi0_policy.sim.demonstrations import (
    DEFAULT_IMAGE_HEIGHT, DEFAULT_IMAGE_WIDTH, DEFAULT_PROMPT, ROBOT, robot_state,
    TOP_CAMERA_NAME)
from pi0_policy.sim.plan import checkpoint_demo_settings
from pi0_policy.sim.scripted import apply_command, EPISODE_STEPS, held_success, StageReport

# Seeds of evaluation episodes start here: far from the seeds the demonstrations used.
EVAL_FIRST_SEED = 100_000
DEFAULT_EXECUTE_STEPS = 25

# (observation dict) -> (T, D) robot commands.
ChunkPolicy = Callable[[dict], np.ndarray]


def run_episode(sim: AlohaSim, policy: ChunkPolicy, adapter: object, seed: int, *,
                steps: int = EPISODE_STEPS, execute_steps: int = DEFAULT_EXECUTE_STEPS,
                prompt: str = DEFAULT_PROMPT) -> list[int]:
    """
    Run one closed-loop episode; return the reward after every step.

    Raises:
        ValueError: ``execute_steps`` < 1.

    """
    if execute_steps < 1:
        raise ValueError(f'execute_steps must be >= 1; got {execute_steps}.')
    sim.reset(seed)
    rewards: list[int] = []
    chunk = np.zeros((0, 0))
    for t in range(steps):
        k = t % execute_steps
        if k == 0 or k >= len(chunk):
            observation = {'images': {TOP_CAMERA_NAME: sim.render(TOP_CAMERA)},
                           'state': robot_state(sim, adapter), 'prompt': prompt}
            chunk, k = policy(observation), 0
            chunk = chunk[:execute_steps]
        apply_command(sim, chunk[k])
        sim.step()
        rewards.append(sim.reward())
    return rewards


def evaluate(policy: ChunkPolicy, seeds: range, *, image_height: int = DEFAULT_IMAGE_HEIGHT,
             image_width: int = DEFAULT_IMAGE_WIDTH, steps: int = EPISODE_STEPS,
             execute_steps: int = DEFAULT_EXECUTE_STEPS, prompt: str = DEFAULT_PROMPT,
             log: Callable[[str], None] | None = print) -> StageReport:
    """Run one episode per seed and return the reward stages reached."""
    from embodiment_adapters import load_adapter
    adapter = load_adapter(ROBOT)
    sim = AlohaSim(AlohaSimConfig(image_height=image_height, image_width=image_width))
    rewards = []
    try:
        for seed in seeds:
            rewards.append(run_episode(sim, policy, adapter, seed, steps=steps,
                                       execute_steps=execute_steps, prompt=prompt))
            if log:
                log(f'seed {seed}: max reward {max(rewards[-1], default=0)}, success held: '
                    f'{held_success(rewards[-1])}')
    finally:
        sim.close()
    return StageReport.from_rewards(rewards)


def checkpoint_policy(checkpoint: str | None, *, asset_id: str | None = None, seed: int = 0,
                      num_steps: int = 10) -> ChunkPolicy:
    """Load a checkpoint (None: the random tiny model) as an observation -> chunk function."""
    from pi0_policy.runtime.policy import Pi0Policy
    policy = Pi0Policy.from_checkpoint(checkpoint, ROBOT, asset_id=asset_id, seed=seed,
                                       num_steps=num_steps)
    return lambda observation: policy.infer(observation).actions


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint and print (and optionally write) the per-stage success."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint folder (default: the random tiny model)')
    parser.add_argument('--asset-id', default=None, help='norm-stats asset of the checkpoint')
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=EVAL_FIRST_SEED, help='first cube seed')
    parser.add_argument('--execute-steps', type=int, default=DEFAULT_EXECUTE_STEPS)
    parser.add_argument('--num-steps', type=int, default=10, help='denoising steps')
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
    # The camera size the checkpoint was trained on (its demo.json), as the demo renders it.
    sim = checkpoint_demo_settings(args.checkpoint)['sim']
    image_height = int(args.image_height or sim.get('image_height', DEFAULT_IMAGE_HEIGHT))
    image_width = int(args.image_width or sim.get('image_width', DEFAULT_IMAGE_WIDTH))
    policy = checkpoint_policy(args.checkpoint, asset_id=args.asset_id,
                               num_steps=args.num_steps)
    report = evaluate(policy, range(args.seed, args.seed + args.episodes),
                      image_height=image_height, image_width=image_width,
                      execute_steps=args.execute_steps)
    print(report.describe())
    if args.out:
        result = {'checkpoint': args.checkpoint, 'execute_steps': args.execute_steps,
                  'image_height': image_height, 'image_width': image_width,
                  'first_seed': args.seed, 'wall_s': time.perf_counter() - start,
                  **report.as_dict()}
        args.out.write_text(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
