"""
The committed demo checkpoint loads and reproduces its stored actions on a fixed observation.

``python test/test_demo_checkpoint.py`` rewrites the reference file from the checkpoint (only
when the checkpoint is replaced on purpose).
"""

import json
import pathlib

import numpy as np
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.sim import plan

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / plan.CHECKPOINTS_DIR / plan.DEFAULT_CHECKPOINT
REFERENCE = ROOT / 'test' / 'data' / 'demo_checkpoint_reference.json'
# Float32 on another CPU sums in another order; robot units (rad).
TOLERANCE = 1e-4
# The fixed observation: the sim's start pose with a seeded image and seeded noise.
START_STATE = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.0579,
               0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.0579]
IMAGE_SHAPE = (96, 128, 3)
SEED = 7
FILES = ('model.safetensors', 'config.json', 'tokenizer.model', 'README.md',
         plan.DEMO_SETTINGS_FILE)
MAX_BYTES = 50 * 1024 * 1024


def observation(policy: Pi0Policy) -> dict:
    """Build the fixed observation: image, state, prompt and initial noise."""
    rng = np.random.default_rng(SEED)
    image = rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
    noise = rng.standard_normal((policy.config.action_horizon, policy.config.action_dim))
    return {'images': {'cam_high': image}, 'state': np.array(START_STATE),
            'prompt': plan.DEFAULT_PROMPT, 'noise': noise.astype(np.float32)}


def load() -> Pi0Policy:
    """Load the checkpoint the way the demo's pi0 node does."""
    return Pi0Policy.from_checkpoint(str(CHECKPOINT), 'aloha')


def test_checkpoint_is_complete_and_small():
    for name in FILES:
        assert (CHECKPOINT / name).is_file(), f'{name} missing from {CHECKPOINT}'
    assert list(CHECKPOINT.glob('assets/*/norm_stats.json')), 'norm stats missing'
    size = sum(p.stat().st_size for p in CHECKPOINT.rglob('*') if p.is_file())
    assert size <= MAX_BYTES
    assert plan.find_default_checkpoint() == str(CHECKPOINT)
    settings = plan.checkpoint_demo_settings(str(CHECKPOINT))
    assert settings['sim']['camera_map'] == 'cam_high=top'


def test_checkpoint_actions_match_reference():
    policy = load()
    try:
        actions = policy.infer(observation(policy)).actions
    finally:
        policy.close()
    expected = np.array(json.loads(REFERENCE.read_text())['actions'])
    assert actions.shape == expected.shape
    np.testing.assert_allclose(actions, expected, rtol=0.0, atol=TOLERANCE)


def test_reference_is_not_trivial():
    expected = np.array(json.loads(REFERENCE.read_text())['actions'])
    assert np.all(np.isfinite(expected))
    assert np.ptp(expected, axis=0).max() > 1e-3  # the chunk moves


if __name__ == '__main__':
    policy = load()
    result = policy.infer(observation(policy)).actions
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({
        'checkpoint': str(CHECKPOINT.relative_to(ROOT)), 'seed': SEED,
        'actions': np.round(result, 8).tolist()}, indent=1) + '\n')
    print(f'wrote {REFERENCE}: {result.shape}')


def test_demo_runs_the_checkpoint_as_its_demo_json_asks(tmp_path):
    options = plan.parse_args(['--episodes', '3'])
    assert (options.checkpoint, options.episodes) == (str(CHECKPOINT), 3)
    assert plan.parse_args(['--random-model']).checkpoint == ''
    run = plan.plan_run(options, plan.load_params(), log=lambda _: None,
                        measure=lambda _: None)  # a CPU checkpoint: simulated time, no measuring
    assert run.clock.sim_time and run.strategy == 'rtc'
    params = plan.write_params(options, tmp_path / 'p.yaml', sim_time=True, strategy=run.strategy)
    sim = params[plan.SIM_NODE_NAME][plan.ROS_PARAMETERS_KEY]
    assert (sim['image_height'], sim['image_width']) == (96, 128)
    assert sim['camera_map'] == 'cam_high=top'
    policy = params[plan.POLICY_NODE_NAME][plan.ROS_PARAMETERS_KEY]
    assert policy['checkpoint'] == str(CHECKPOINT)
    assert (policy['strategy'], policy['execute_steps']) == ('rtc', 25)  # its demo.json
