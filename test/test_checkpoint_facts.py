"""
Test the openpi checkpoint facts.

Joint-velocity actions (DROID), known assets, default prompts, the action-statistics sanity check
and a converted checkpoint's assets in the parent folder.
"""

import json
import shutil

import embodiment_adapters
from embodiment_adapters import ActionMode, unified
import numpy as np
from pi0_policy.runtime import assets
from pi0_policy.runtime import pipeline as pl
from pi0_policy.runtime import policy as pol
from pi0_policy.runtime import transforms as tf
import pytest
from test_policy import (
    HORIZON, make_pipeline, MODEL_WIDTH, observation, ROBOT_CONFIG_DIR, TEST_STEPS,
    write_checkpoint)
# The Session tests' 'parts' fixture (made visible here, requested by name) and Run helper.
from test_session import parts, Run  # noqa: F401, I100

DROID_ROBOT = 'franka_droid'
DROID_RATE_HZ = 15.0
# DROID: a normalised joint velocity of 1 is 0.2 rad per 1/15 s step.
DROID_VELOCITY_SCALE = 0.2 * DROID_RATE_HZ
DROID_ARM = range(7)


def stats(mean, std) -> tf.NormStats:
    return tf.NormStats(mean=np.asarray(mean, float), std=np.asarray(std, float))


# ----------------------------------------------------------------------- velocity actions


def test_droid_robot_config_declares_joint_velocities_at_15_hz():
    adapter = embodiment_adapters.load_adapter(DROID_ROBOT)
    assert adapter.config.control_rate_hz == DROID_RATE_HZ
    assert adapter.config.norm_stats_asset_id == 'droid'
    arm = [j for j in adapter.config.joints if j.gripper is None]
    assert [j.slot for j in arm] == list(DROID_ARM)
    assert all(j.action_mode == ActionMode.VELOCITY for j in arm)
    assert all(j.velocity_scale == pytest.approx(DROID_VELOCITY_SCALE) for j in arm)
    gripper = next(j for j in adapter.config.joints if j.gripper is not None)
    assert (gripper.slot, gripper.action_mode) == (7, ActionMode.ABSOLUTE)
    np.testing.assert_array_equal(np.flatnonzero(adapter.velocity_mask), list(DROID_ARM))
    assert not adapter.delta_mask.any() and not adapter.is_velocity.any()  # positions out


def test_velocities_are_integrated_into_positions_never_sent_as_positions():
    adapter = embodiment_adapters.load_adapter(DROID_ROBOT)
    pipe = make_pipeline(adapter)
    obs = observation(adapter)
    inputs = pipe.prepare(obs)
    q = obs['state'][:7]
    # Zero velocity: every target is the measured position (an absolute reading would be 0 rad).
    _, robot = pipe.finish(np.zeros((HORIZON, MODEL_WIDTH)), inputs)
    np.testing.assert_allclose(robot[:, :7], np.tile(q, (HORIZON, 1)))
    # Constant velocity v: target k = q + (k + 1) * dt * v * scale, clipped at max_velocity.
    v = np.linspace(-0.5, 0.5, 7)
    model = np.zeros((HORIZON, MODEL_WIDTH))
    model[:, :7] = v
    model[:, 7] = 0.25  # the gripper stays a position
    unified_actions, robot = pipe.finish(model, inputs)
    speed = np.clip(v * DROID_VELOCITY_SCALE, -adapter.max_velocity[:7],
                    adapter.max_velocity[:7])
    steps = np.arange(1, HORIZON + 1)[:, None]
    np.testing.assert_allclose(robot[:, :7], q + steps / DROID_RATE_HZ * speed)
    np.testing.assert_allclose(unified_actions[:, :7], robot[:, :7])
    spec = adapter.config.joints[7].gripper
    np.testing.assert_allclose(robot[:, 7], spec.open_value + 0.25 * (
        spec.closed_value - spec.open_value))
    # Speeds above max_velocity are clipped before integration.
    model[:, :7] = 10.0
    _, robot = pipe.finish(model, inputs)
    np.testing.assert_allclose(robot[-1, :7] - q, HORIZON / DROID_RATE_HZ * adapter.max_velocity[
        :7])


def test_integrate_velocities_only_touches_the_velocity_dims():
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(2, 5, 4))  # (B, T, U)
    state = rng.normal(size=(2, 4))
    mask = np.array([True, False, True, False])
    out = tf.integrate_velocities(actions, state, mask, scale=np.full(4, 2.0),
                                  limit=np.full(4, np.inf), dt=0.1)
    np.testing.assert_array_equal(out[..., ~mask], actions[..., ~mask])
    expected = state[:, None, mask] + 0.1 * np.cumsum(2.0 * actions[..., mask], axis=1)
    np.testing.assert_allclose(out[..., mask], expected)
    with pytest.raises(ValueError, match='positive step dt'):
        tf.integrate_velocities(actions, state, mask, scale=np.ones(4), limit=np.ones(4), dt=0)


def test_absolute_action_mode_with_velocity_joints_is_refused():
    adapter = embodiment_adapters.load_adapter(DROID_ROBOT)
    with pytest.raises(ValueError, match=r"action_mode 'absolute' treats every action as an "
                                         r"absolute position, but robot 'franka_droid'"):
        pol.Pi0Policy.from_checkpoint(None, adapter, num_steps=TEST_STEPS,
                                      action_mode='absolute')


def test_droid_asset_selects_velocity_mode_and_refuses_position_robots(tmp_path):
    droid = embodiment_adapters.load_adapter(DROID_ROBOT)
    root = tmp_path / 'pi0_droid'
    write_checkpoint(root, droid, assets=('droid',))
    policy = pol.Pi0Policy.from_checkpoint(root, DROID_ROBOT, num_steps=TEST_STEPS)
    assert policy.norm_stats_asset_id == 'droid' and policy.pipeline.velocity_mask.any()
    result = policy.infer(observation(droid))
    assert result.actions.shape == (policy.action_horizon, droid.dof)
    # The absolute-position Franka config must not run the DROID asset.
    with pytest.raises(ValueError) as info:
        pol.Pi0Policy.from_checkpoint(root, 'franka', asset_id='droid')
    message = str(info.value)
    assert ("Norm stats asset 'droid' (pi0_droid, pi0_fast_droid) was trained on velocity"
            in message)
    assert "'fr3_joint1: absolute'" in message
    assert "Use robot 'franka_droid' (config/robots/franka_droid.yaml)" in message
    # The right action modes at the wrong rate are refused too.
    text = (ROBOT_CONFIG_DIR / 'franka_droid.yaml').read_text()
    slow = tmp_path / 'droid_20hz.yaml'
    slow.write_text(text.replace('control_rate_hz: 15.0', 'control_rate_hz: 20.0'))
    with pytest.raises(ValueError, match=r'recorded at 15.0 Hz, but robot .* control_rate_hz '
                                         r'20.0: its chunks would play at the wrong speed'):
        pol.Pi0Policy.from_checkpoint(root, slow)


def test_aloha_sim_asset_needs_absolute_actions():
    adapter = embodiment_adapters.load_adapter('aloha')
    sim = 'lerobot/aloha_sim_transfer_cube_human'
    with pytest.raises(ValueError, match=r"trained on absolute joint actions, but robot 'aloha'"):
        assets.check_known_asset(sim, adapter, adapter.delta_mask)
    assets.check_known_asset(sim, adapter, np.zeros_like(adapter.delta_mask))  # absolute mode
    assets.check_known_asset('trossen', adapter, adapter.delta_mask)  # unknown: not judged
    assets.check_known_asset(None, adapter, adapter.delta_mask)


# ------------------------------------------------------------------------- default prompt


def test_blank_prompt_uses_the_default_or_is_refused():
    adapter = embodiment_adapters.load_adapter('mock')
    obs = observation(adapter)
    without = make_pipeline(adapter)
    for blank in ('', '   ', '\n', '_'):
        with pytest.raises(pl.MissingInstructionError, match=r'No instruction: the prompt is '
                                                             r'.* and the checkpoint has no '
                                                             r'default prompt'):
            without.prepare({**obs, 'prompt': blank})
    with pytest.raises(TypeError, match='prompt must be a str'):
        without.prepare({**obs, 'prompt': None})
    with_default = pl.Pi0Pipeline(
        adapter, without.tokenizer, tf.Normalizer(), image_size=224, num_cameras=3,
        state_dim=MODEL_WIDTH, action_dim=MODEL_WIDTH, default_prompt='Transfer cube')
    assert with_default.prepare({**obs, 'prompt': ' '}).prompt.text == 'Transfer cube'
    assert with_default.prepare({**obs, 'prompt': 'wave'}).prompt.text == 'wave'
    with pytest.raises(ValueError, match="default_prompt ' ' is blank"):
        pl.Pi0Pipeline(adapter, without.tokenizer, tf.Normalizer(), image_size=224,
                       num_cameras=3, state_dim=MODEL_WIDTH, action_dim=MODEL_WIDTH,
                       default_prompt=' ')


def test_checkpoint_default_prompt_from_config_json_option_and_known_asset(tmp_path):
    adapter = embodiment_adapters.load_adapter('mock')
    root = tmp_path / 'ckpt'
    write_checkpoint(root, adapter)
    obs = {**observation(adapter), 'prompt': ''}
    policy = pol.Pi0Policy.from_checkpoint(root, adapter, num_steps=TEST_STEPS)
    assert policy.default_prompt is None
    with pytest.raises(pl.MissingInstructionError):
        policy.infer(obs)
    config = root / 'config.json'
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, 'default_prompt': 'stack the blocks'}))
    policy = pol.Pi0Policy.from_checkpoint(root, adapter, num_steps=TEST_STEPS)
    assert policy.default_prompt == 'stack the blocks'
    assert policy.infer(obs).prompt == 'stack the blocks'
    option = pol.Pi0Policy.from_checkpoint(root, adapter, num_steps=TEST_STEPS,
                                           default_prompt='wave')
    assert option.infer(obs).prompt == 'wave'  # the option wins over config.json
    config.write_text(json.dumps({**data, 'default_prompt': 3}))
    with pytest.raises(ValueError, match=r"has 'default_prompt' = 3; expected a non-empty"):
        pol.Pi0Policy.from_checkpoint(root, adapter)
    assert assets.read_default_prompt(None) == (None, 'none')
    sim = 'lerobot/aloha_sim_transfer_cube_human'
    prompt, source = assets.read_default_prompt(tmp_path / 'nothing', sim)
    assert (prompt, source) == ('Transfer cube', f'openpi pi0_aloha_sim (asset {sim!r})')
    # The tiny random model stands in the robot's example prompt.
    assert pol.Pi0Policy.from_checkpoint(None, adapter).default_prompt == adapter.EXAMPLE_PROMPT


# ------------------------------------------------------------- action statistics vs modes


def test_action_statistics_that_contradict_the_modes_are_reported():
    adapter = embodiment_adapters.load_adapter('ur5e')  # delta joints, absolute gripper
    width = unified.UNIFIED_DIM
    joints = [j for j in adapter.config.joints if j.gripper is None]
    state_mean = np.zeros(width)
    for j in joints:
        state_mean[j.slot] = j.lower + 0.7 * (j.upper - j.lower)  # far from zero
    std = np.full(width, 0.2)
    delta_stats = tf.Normalizer(state=stats(state_mean, std), actions=stats(np.zeros(width), std))
    assert assets.check_action_statistics(delta_stats, adapter, adapter.delta_mask) == []
    absolute_stats = tf.Normalizer(state=stats(state_mean, std), actions=stats(state_mean, std))
    warnings = assets.check_action_statistics(absolute_stats, adapter, adapter.delta_mask)
    assert len(warnings) == len(joints)
    assert warnings[0].startswith(f"Joint '{joints[0].name}' (unified dim {joints[0].slot}) is "
                                  'declared action: delta, but the checkpoint action '
                                  'statistics look ABSOLUTE')
    assert 'set action: absolute for it' in warnings[0]
    # Declared absolute (action_mode 'absolute'), statistics of offsets.
    none = np.zeros_like(adapter.delta_mask)
    warnings = assets.check_action_statistics(delta_stats, adapter, none)
    assert len(warnings) == len(joints) and 'look like OFFSETS or VELOCITIES' in warnings[0]
    assert 'set action: delta' in warnings[0]
    assert assets.check_action_statistics(absolute_stats, adapter, none) == []
    # A state mean near zero cannot tell the two apart: nothing is claimed.
    centred = tf.Normalizer(state=stats(np.zeros(width), std), actions=stats(np.zeros(width),
                                                                             std))
    assert assets.check_action_statistics(centred, adapter, adapter.delta_mask) == []
    assert assets.check_action_statistics(tf.Normalizer(), adapter, adapter.delta_mask) == []


def test_policy_logs_and_keeps_the_statistics_warnings(tmp_path, caplog):
    adapter = embodiment_adapters.load_adapter('mock')
    root = tmp_path / 'ckpt'
    write_checkpoint(root, adapter, assets=('a',))
    path = root / 'assets' / 'a' / 'norm_stats.json'
    native = len(adapter.state_names)
    mean = [1.0] * native  # absolute-looking actions for the mock's delta joints
    entry = {'mean': mean, 'std': [0.1] * native}
    path.write_text(json.dumps({'norm_stats': {'state': entry, 'actions': entry}}))
    policy = pol.Pi0Policy.from_checkpoint(root, adapter, num_steps=TEST_STEPS)
    delta_joints = [j.name for j in adapter.config.joints if j.action_mode == ActionMode.DELTA]
    assert len(policy.checkpoint_warnings) == len(delta_joints)
    assert f"Joint '{delta_joints[0]}'" in caplog.text and 'look ABSOLUTE' in caplog.text


# ------------------------------------------------------------ assets in the parent folder


def test_converted_checkpoint_finds_assets_in_the_parent_folder(tmp_path):
    adapter = embodiment_adapters.load_adapter('mock')
    openpi_ckpt = tmp_path / 'openpi_ckpt'  # holds params/ and assets/
    converted = openpi_ckpt / 'pytorch'  # the converter's output folder
    write_checkpoint(converted, adapter, assets=('mock_data',))
    shutil.move(str(converted / 'assets'), str(openpi_ckpt / 'assets'))
    assert tf.find_norm_stats(converted) == openpi_ckpt / 'assets' / 'mock_data' / (
        'norm_stats.json')
    policy = pol.Pi0Policy.from_checkpoint(converted, adapter, num_steps=TEST_STEPS,
                                           asset_id='mock_data')
    assert policy.norm_stats_asset_id == 'mock_data'
    assert policy.pipeline.normalizer.source.parent.parent == openpi_ckpt / 'assets'
    assert not policy.tokenizer.is_fallback  # the tokenizer in the parent's assets/ too
    # Neither folder has the asked asset: the error names the exact file and where to copy it.
    with pytest.raises(ValueError) as info:
        tf.find_norm_stats(converted, 'trossen')
    target = converted / 'assets' / 'trossen' / 'norm_stats.json'
    assert ('copy assets/trossen/norm_stats.json of the openpi checkpoint (the folder that holds '
            f"params/) or training run to '{target}'" in str(info.value))


def test_a_run_without_instruction_holds_with_the_reason(tmp_path, request):
    # A trained checkpoint without a default prompt, and a run without an instruction.
    root = tmp_path / 'ckpt'
    write_checkpoint(root, embodiment_adapters.load_adapter('mock'))
    policy = pol.Pi0Policy.from_checkpoint(root, 'mock', num_steps=TEST_STEPS)
    run = Run(request.getfixturevalue('parts'), policy)
    run.session.instruction = ''
    run.feed()
    run.session.tick()  # waits for the first chunk, asks for an inference
    with pytest.raises(pl.MissingInstructionError) as info:
        run.session.infer_once()
    run.session.inference_failed(info.value)
    run.step()
    assert run.status.state.name in ('WAITING', 'HOLDING')  # held, not running, not crashed
    assert 'No instruction: the prompt is' in run.status.detail
    assert not run.chunks  # nothing was inferred from an empty prompt
