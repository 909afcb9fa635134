"""Tests of the embodiment adapters on every shipped robot config."""

import math
import os
import pathlib
import subprocess
import sys

import embodiment_adapters as ea
from embodiment_adapters import bimanual
from embodiment_adapters.unified import OPENPI_MODEL_WIDTH, pad, PAPER_MODEL_WIDTH, trim
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / 'config' / 'robots').glob('*.yaml'))
EXPECTED_FAMILY = {'aloha': 'bimanual', 'franka': 'single_arm', 'ur5e': 'single_arm',
                   'mobile_manipulator': 'mobile_manipulator', 'mock': 'mock'}
# Round trips go through float64 arithmetic only.
ROUND_TRIP_ATOL = 1e-9


@pytest.fixture(params=SHIPPED)
def adapter(request) -> ea.EmbodimentAdapter:
    """Return the adapter of one shipped robot config."""
    return ea.load_adapter(request.param)


def _state(adapter, example):
    return adapter.state_from_joint_states(example['names'], example['positions'],
                                           example['base_velocity'])


def test_all_expected_robots_ship():
    """The five robot configs of the issue exist and load into their families."""
    assert set(EXPECTED_FAMILY) <= set(SHIPPED)
    for robot, family in EXPECTED_FAMILY.items():
        a = ea.load_adapter(robot)
        assert a.family == family and a.name == robot
        assert isinstance(a, ea.get_embodiment(family))


def test_registry_lists_families():
    """All four families are registered."""
    assert {'single_arm', 'bimanual', 'mobile_manipulator', 'mock'} <= set(
        ea.available_embodiments())


@pytest.mark.parametrize('width', [PAPER_MODEL_WIDTH, OPENPI_MODEL_WIDTH])
def test_state_round_trips_and_unused_dims_are_zero(adapter, width):
    """Joint states -> unified -> padded -> trimmed -> state is the identity; unused dims 0."""
    rng = np.random.default_rng(1)
    for _ in range(3):
        state = _state(adapter, adapter.make_example(rng))
        u = adapter.state_to_unified(state)
        assert u.shape == (ea.UNIFIED_DIM,)
        unused = np.ones(ea.UNIFIED_DIM, dtype=bool)
        unused[adapter.state_slots] = False
        assert np.all(u[unused] == 0)
        model_in = pad(u, width)
        assert np.all(model_in[ea.UNIFIED_DIM:] == 0)
        np.testing.assert_allclose(adapter.state_from_unified(trim(model_in)), state,
                                   atol=ROUND_TRIP_ATOL)


@pytest.mark.parametrize('width', [PAPER_MODEL_WIDTH, OPENPI_MODEL_WIDTH])
def test_action_round_trips_and_unused_dims_are_zero(adapter, width):
    """Robot actions (H, D) -> unified -> pad -> trim -> robot is the identity."""
    rng = np.random.default_rng(2)
    actions = rng.uniform(adapter.lower, adapter.upper, size=(50, adapter.dof))
    u = adapter.actions_to_unified(actions)
    assert u.shape == (50, ea.UNIFIED_DIM)
    assert np.all(u[:, ~adapter.used_mask] == 0)
    back = adapter.actions_from_unified(trim(pad(u, width)))
    assert back.shape == (50, adapter.dof)
    np.testing.assert_allclose(back, actions, atol=ROUND_TRIP_ATOL)
    # And the other way on the dims the robot uses (model output -> robot -> model).
    model = np.where(adapter.used_mask, rng.normal(size=(50, ea.UNIFIED_DIM)), 0.0)
    np.testing.assert_allclose(adapter.actions_to_unified(adapter.actions_from_unified(model)),
                               model, atol=ROUND_TRIP_ATOL)


def test_batched_state_conversion(adapter):
    """Leading axes pass through state_to_unified."""
    rng = np.random.default_rng(3)
    states = np.stack([_state(adapter, adapter.make_example(rng)) for _ in range(4)])
    batched = adapter.state_to_unified(states)
    assert batched.shape == (4, ea.UNIFIED_DIM)
    np.testing.assert_allclose(batched[2], adapter.state_to_unified(states[2]))


def test_shuffled_joint_states_map_by_name(adapter):
    """Any order of the JointState entries gives the same state, equal to a by-name lookup."""
    rng = np.random.default_rng(4)
    example = adapter.make_example(rng)
    lookup = dict(zip(example['names'], example['positions']))
    expected = [lookup[n] for n in adapter.state_names if n in lookup]
    state = _state(adapter, example)
    np.testing.assert_array_equal(state[:len(expected)], expected)
    for _ in range(5):
        order = rng.permutation(len(example['names']))
        names = [example['names'][i] for i in order]
        shuffled = adapter.state_from_joint_states(names, example['positions'][order],
                                                   example['base_velocity'])
        np.testing.assert_array_equal(shuffled, state)
    # Extra joints that the robot does not use are ignored.
    names = ['unrelated_joint'] + list(example['names'])
    positions = np.concatenate([[np.nan], example['positions']])
    np.testing.assert_array_equal(
        adapter.state_from_joint_states(names, positions, example['base_velocity']), state)


def test_make_example_shapes(adapter):
    """Examples carry every state joint, one image per camera and a prompt."""
    example = adapter.make_example(np.random.default_rng(5))
    assert set(adapter.state_names[:len(adapter.config.joints)]) <= set(example['names'])
    assert len(example['names']) == example['positions'].shape[0]
    for cam in adapter.cameras:
        image = example['images'][cam.name]
        assert image.shape == (cam.height, cam.width, 3) and image.dtype == np.uint8
    assert isinstance(example['prompt'], str) and example['prompt']
    small = adapter.make_example(np.random.default_rng(5), image_hw=(8, 10))
    assert all(im.shape == (8, 10, 3) for im in small['images'].values())
    assert (example['base_velocity'] is None) == (not adapter.config.base)


def test_limits_and_clamp(adapter):
    """clamp_to_limits clips joints to [lower, upper] and base velocities to +-max."""
    assert adapter.lower.shape == adapter.upper.shape == (adapter.dof,)
    assert np.all(adapter.lower <= adapter.upper)
    assert np.all(adapter.max_velocity > 0)
    span = adapter.upper - adapter.lower
    actions = np.stack([adapter.lower - 0.5 * span - 1, adapter.upper + 0.5 * span + 1,
                        (adapter.lower + adapter.upper) / 2])
    clamped = adapter.clamp_to_limits(actions)
    np.testing.assert_array_equal(clamped[0], adapter.lower)
    np.testing.assert_array_equal(clamped[1], adapter.upper)
    np.testing.assert_array_equal(clamped[2], actions[2])
    np.testing.assert_array_equal(adapter.is_velocity,
                                  [n in {b.name for b in adapter.config.base}
                                   for n in adapter.action_names])


def test_commands_cover_every_dim_once(adapter):
    """Every action dim is sent by exactly one command of a known type."""
    sent = [n for cmd in adapter.commands for n in cmd.names]
    assert sorted(sent) == sorted(adapter.action_names)
    for cmd in adapter.commands:
        assert cmd.type in {'joint_trajectory', 'forward_position', 'twist', 'twist_stamped'}
        assert len(cmd.joint_names) == len(cmd.names)


def test_cameras_feed_distinct_model_slots(adapter):
    """Model slots are unique, at least slot 0 is fed, and model_images routes by name."""
    slots = [c.model_slot for c in adapter.cameras if c.model_slot is not None]
    assert len(slots) == len(set(slots)) and 0 in slots
    example = adapter.make_example(np.random.default_rng(6), image_hw=(4, 4))
    routed = adapter.model_images(example['images'])
    assert set(routed) == set(ea.MODEL_IMAGE_KEYS)
    for cam in adapter.cameras:
        if cam.model_slot is not None:
            assert routed[ea.MODEL_IMAGE_KEYS[cam.model_slot]] is example['images'][cam.name]


# ----- ALOHA: openpi conventions, written here independently from the spec (section 6.4) -----

def _spec_state_gripper(finger_m: float, ros_open: float = 0.0579, ros_closed: float = 0.0440):
    normalised = (finger_m - ros_closed) / (ros_open - ros_closed)
    p = normalised * (0.05800 - 0.01844) + 0.01844
    r, arm = 0.022, 0.036
    angle = math.asin(min(1.0, max(-1.0, (r * r + p * p - arm * arm) / (2 * r * p))))
    return (angle - 0.5476) / (1.6296 - 0.5476)


def _spec_action_gripper_joint(g: float, ros_open: float = 1.6214, ros_closed: float = 0.6197):
    normalised = (g + 0.5476 - (-0.6213)) / (1.4910 - (-0.6213))
    return ros_closed + normalised * (ros_open - ros_closed)


def test_aloha_spec_formulas_known_values():
    """Hand-checked values: fully open finger -> horn at 90 deg; g = 0 -> 1.17402 rad."""
    assert _spec_state_gripper(0.0579) == pytest.approx((math.pi / 2 - 0.5476) / 1.082)
    assert _spec_action_gripper_joint(0.0) == pytest.approx(1.17402, abs=1e-5)
    assert bimanual.pi_gripper_state_from_finger(1.0) == pytest.approx(0.9456536, abs=1e-6)


def test_aloha_state_matches_spec():
    """Flip mask on joints and the linear->angular gripper conversion, numerically."""
    a = ea.load_adapter('aloha')
    assert a.config.adapt_to_pi
    rng = np.random.default_rng(7)
    names = ['waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate']
    for finger in (0.0440, 0.0475, 0.0512, 0.0579):
        joints = rng.uniform(-1, 1, size=(2, 6))
        values = {f'{side}_{n}': joints[k, i] for k, side in enumerate(['left', 'right'])
                  for i, n in enumerate(names)}
        values.update({'left_left_finger': finger, 'right_left_finger': 0.05,
                       'left_gripper': 1.0, 'right_gripper': 1.0})
        state = a.state_from_joint_states(list(values), list(values.values()))
        u = a.state_to_unified(state)
        flip = np.array([1, -1, -1, 1, 1, 1])
        np.testing.assert_allclose(u[0:6], flip * joints[0])
        np.testing.assert_allclose(u[7:13], flip * joints[1])
        assert u[6] == pytest.approx(_spec_state_gripper(finger), abs=1e-12)
        assert u[13] == pytest.approx(_spec_state_gripper(0.05), abs=1e-12)
        assert np.all(u[14:] == 0)


def test_aloha_actions_match_spec():
    """Flip mask on joint actions; gripper g + 0.5476 normalised, then the ROS 2 joint range."""
    a = ea.load_adapter('aloha')
    rng = np.random.default_rng(8)
    u = np.zeros((10, ea.UNIFIED_DIM))
    u[:, :14] = rng.uniform(-1, 1, size=(10, 14))
    actions = a.actions_from_unified(u)
    assert a.action_names[6] == 'left_gripper' and a.action_names[13] == 'right_gripper'
    flip = np.array([1, -1, -1, 1, 1, 1])
    np.testing.assert_allclose(actions[:, 0:6], flip * u[:, 0:6])
    np.testing.assert_allclose(actions[:, 7:13], flip * u[:, 7:13])
    for h in range(10):
        assert actions[h, 6] == pytest.approx(_spec_action_gripper_joint(u[h, 6]), abs=1e-12)
        assert actions[h, 13] == pytest.approx(_spec_action_gripper_joint(u[h, 13]), abs=1e-12)


def test_aloha_delta_mask_and_commands():
    """Joints delta, grippers absolute (make_bool_mask(6, -1, 6, -1)); per-arm commands."""
    a = ea.load_adapter('aloha')
    expected = np.zeros(ea.UNIFIED_DIM, dtype=bool)
    expected[[0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]] = True
    np.testing.assert_array_equal(a.delta_mask, expected)
    by_topic = {c.topic: c for c in a.commands}
    arm = by_topic['/follower_left/arm_controller/joint_trajectory']
    assert arm.type == 'joint_trajectory'
    assert arm.joint_names == ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle',
                               'wrist_rotate')
    grip = by_topic['/follower_right/gripper_controller/commands']
    assert grip.type == 'forward_position' and grip.names == ('right_gripper',)
    assert grip.joint_names == ('gripper',)
    assert [(t.topic, t.prefix) for t in a.joint_state_topics] == [
        ('/follower_left/joint_states', 'left_'), ('/follower_right/joint_states', 'right_')]
    cams = {c.name: (c.model_slot, c.required) for c in a.cameras}
    assert cams == {'cam_high': (0, True), 'cam_left_wrist': (1, False),
                    'cam_right_wrist': (2, False), 'cam_low': (None, False)}
    assert a.config.norm_stats_asset_id == 'trossen'


def test_aloha_split_joint_states_restores_per_topic_messages():
    """Prefixed example joints split into per-arm messages with the robot's own names."""
    a = ea.load_adapter('aloha')
    example = a.make_example(np.random.default_rng(9))
    split = a.split_joint_states(example['names'], example['positions'])
    assert set(split) == {'/follower_left/joint_states', '/follower_right/joint_states'}
    left_names = split['/follower_left/joint_states'][0]
    assert 'waist' in left_names and 'left_finger' in left_names
    names, positions = [], []
    for t in a.joint_state_topics:
        names += [t.prefix + n for n in split[t.topic][0]]
        positions += split[t.topic][1]
    np.testing.assert_array_equal(a.state_from_joint_states(names, positions),
                                  _state(a, example))


def test_aloha_without_adapt_to_pi_uses_linear_grippers(tmp_path):
    """adapt_to_pi: false keeps joints as they are and maps grippers linearly (0 open)."""
    text = (ROOT / 'config' / 'robots' / 'aloha.yaml').read_text().replace(
        'adapt_to_pi: true', 'adapt_to_pi: false')
    path = tmp_path / 'aloha_raw.yaml'
    path.write_text(text)
    a = ea.load_adapter(path)
    state = np.zeros(14)
    state[1], state[6] = 0.3, 0.0579  # shoulder, left finger fully open
    state[13] = 0.0440  # right finger closed
    u = a.state_to_unified(state)
    assert u[1] == pytest.approx(0.3) and u[6] == pytest.approx(0.0)
    assert u[13] == pytest.approx(1.0)


# ----- generic gripper polarity ------------------------------------------------------------

def test_single_arm_gripper_polarity_zero_open_one_closed():
    """Franka finger 0.04 m (open) -> 0, 0.0 m (closed) -> 1; actions map back."""
    a = ea.load_adapter('franka')
    assert a.action_names[7] == 'fr3_finger_joint1'
    state = np.zeros(8)
    state[3], state[5] = -1.0, 1.0
    for finger, expected in ((0.04, 0.0), (0.0, 1.0), (0.01, 0.75)):
        state[7] = finger
        assert a.state_to_unified(state)[7] == pytest.approx(expected)
    u = np.zeros((2, ea.UNIFIED_DIM))
    u[:, 7] = [0.0, 1.0]
    np.testing.assert_allclose(a.actions_from_unified(u)[:, 7], [0.04, 0.0])
    assert a.config.control_rate_hz == 20.0


def test_ur5e_layout():
    """UR5e: 6 joints in 0-5 (delta), gripper in 6 (absolute), Robotiq closed = 0.8 rad -> 1."""
    a = ea.load_adapter('ur5e')
    np.testing.assert_array_equal(np.flatnonzero(a.used_mask), np.arange(7))
    np.testing.assert_array_equal(np.flatnonzero(a.delta_mask), np.arange(6))
    assert a.state_to_unified(np.r_[np.zeros(6), 0.8])[6] == pytest.approx(1.0)


def test_mobile_manipulator_base_semantics():
    """Base dims 14/15/16 are linear x, linear y, yaw rate; torso in 17; twist command."""
    a = ea.load_adapter('mobile_manipulator')
    assert a.dof == ea.UNIFIED_DIM and np.all(a.used_mask)
    assert [(b.slot, b.axis) for b in a.config.base] == [
        (14, 'linear_x'), (15, 'linear_y'), (16, 'angular_z')]
    assert a.action_names[-3:] == ('base_vx', 'base_vy', 'base_wz')
    assert a.action_names[14] == 'torso_lift_joint' and a.config.joints[14].slot == ea.TORSO
    np.testing.assert_array_equal(a.is_velocity, [False] * 15 + [True] * 3)
    np.testing.assert_array_equal(a.upper[-3:], [0.5, 0.5, 1.0])
    np.testing.assert_array_equal(a.lower[-3:], [-0.5, -0.5, -1.0])
    assert not np.any(a.delta_mask[list(ea.BASE_DIMS)])
    twist = [c for c in a.commands if c.type == 'twist_stamped']
    assert len(twist) == 1 and twist[0].names == ('base_vx', 'base_vy', 'base_wz')
    u = np.zeros((1, ea.UNIFIED_DIM))
    u[0, 14:17] = [0.1, -0.2, 0.3]
    np.testing.assert_allclose(a.actions_from_unified(u)[0, -3:], [0.1, -0.2, 0.3])
    assert len(a.state_names) == 15  # the base is not part of the state


def test_mock_embodiment_is_small():
    """The mock robot: 3 joints + gripper, one required camera, registered as 'mock'."""
    a = ea.load_adapter('mock')
    assert a.family == 'mock' and a.dof == 4 and len(a.cameras) == 1
    assert a.cameras[0].required and a.cameras[0].model_slot == 0
    assert {c.type for c in a.commands} == {'joint_trajectory', 'forward_position'}


# ----- error paths -------------------------------------------------------------------------

@pytest.fixture
def mock_adapter() -> ea.EmbodimentAdapter:
    """Return the mock robot's adapter."""
    return ea.load_adapter('mock')


def _mock_joint_states():
    return ['mock_joint1', 'mock_joint2', 'mock_joint3', 'mock_gripper'], [0.1, 0.2, 0.3, 0.02]


def test_error_missing_joint(mock_adapter):
    """A missing joint is named together with the robot and its config file."""
    names, positions = _mock_joint_states()
    with pytest.raises(ValueError, match=r"lacks the joints \['mock_joint2'\]") as err:
        mock_adapter.state_from_joint_states(names[:1] + names[2:], positions[:3])
    assert "robot 'mock'" in str(err.value) and 'mock.yaml' in str(err.value)
    assert 'joint_state_topics' in str(err.value)


def test_error_duplicated_joint(mock_adapter):
    """A joint that appears twice is named."""
    names, positions = _mock_joint_states()
    with pytest.raises(ValueError, match=r"Joint 'mock_joint3' appears twice .*mock\.yaml"):
        mock_adapter.state_from_joint_states(names + ['mock_joint3'], positions + [0.0])


def test_error_length_mismatch(mock_adapter):
    """Names and positions of different lengths are rejected with both counts."""
    names, positions = _mock_joint_states()
    with pytest.raises(ValueError,
                       match=r"robot 'mock' .*mock\.yaml\) has 4 names but 3 positions"):
        mock_adapter.state_from_joint_states(names, positions[:3])


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_error_non_finite(mock_adapter, bad):
    """Reject NaN and Inf positions, naming the joint and the value."""
    names, positions = _mock_joint_states()
    positions[1] = bad
    with pytest.raises(ValueError, match=rf"non-finite positions \[\('mock_joint2', {bad}\)\]"):
        mock_adapter.state_from_joint_states(names, positions)


def test_error_prefix_hint_on_aloha():
    """Unprefixed ALOHA names fail with the expected prefixes in the message."""
    a = ea.load_adapter('aloha')
    with pytest.raises(ValueError, match=r"'/follower_left/joint_states', 'left_'"):
        a.state_from_joint_states(['waist', 'shoulder'], [0.0, 0.0])


def test_error_wrong_shapes(mock_adapter):
    """Conversions reject arrays whose last axis is wrong, naming the expected size."""
    with pytest.raises(ValueError, match=r"unified actions for robot 'mock' has shape \(50, 32\)"
                                         r'; expected the last axis to be 18.*trim\(\)'):
        mock_adapter.actions_from_unified(np.zeros((50, 32)))
    with pytest.raises(ValueError, match=r'state .* shape \(5,\); expected the last axis to be 4'):
        mock_adapter.state_to_unified(np.zeros(5))


def test_error_base_velocity_required(tmp_path):
    """With base.in_state the base velocity must be passed, with the right size."""
    text = (ROOT / 'config' / 'robots' / 'mobile_manipulator.yaml').read_text().replace(
        'in_state: false', 'in_state: true')
    path = tmp_path / 'mm.yaml'
    path.write_text(text)
    a = ea.load_adapter(path)
    assert a.state_names[-3:] == ('base_vx', 'base_vy', 'base_wz')
    example = a.make_example(np.random.default_rng(0))
    state = a.state_from_joint_states(example['names'], example['positions'],
                                      example['base_velocity'])
    np.testing.assert_allclose(a.state_to_unified(state)[14:17], example['base_velocity'])
    with pytest.raises(ValueError, match='base_velocity is None; pass 3 values'):
        a.state_from_joint_states(example['names'], example['positions'])
    with pytest.raises(ValueError, match=r'base_velocity .* is \[0.0\]; expected 3 finite'):
        a.state_from_joint_states(example['names'], example['positions'], [0.0])


def test_error_required_camera_missing(mock_adapter):
    """A missing required camera is named with its topic; bad images are rejected."""
    with pytest.raises(ValueError, match=r"Required camera 'cam_main' \(/mock/camera/image_raw\)"):
        mock_adapter.model_images({})
    with pytest.raises(ValueError, match=r'shape \(4, 4\) and dtype float64; expected'):
        mock_adapter.model_images({'cam_main': np.zeros((4, 4))})


def test_error_unknown_embodiment_suggests():
    """An unknown family lists the available ones and suggests the closest."""
    with pytest.raises(ValueError, match=r"Unknown embodiment 'bimanul'\. Did you mean "
                                         r"'bimanual'\? Available embodiments: \[.*'mock'"):
        ea.get_embodiment('bimanul')


def test_error_unknown_embodiment_in_config_names_file(tmp_path):
    """make_adapter names the config file when its embodiment is unknown."""
    text = (ROOT / 'config' / 'robots' / 'mock.yaml').read_text().replace(
        'embodiment: mock', 'embodiment: single_armm')
    path = tmp_path / 'typo.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=rf'Robot config {path}: Unknown embodiment '
                                         r"'single_armm'\. Did you mean 'single_arm'\?"):
        ea.load_adapter(path)


def test_error_duplicate_registration():
    """Registering a second class under a taken name fails."""
    with pytest.raises(ValueError, match="'mock' is already registered by MockAdapter"):
        ea.register_embodiment('mock')(type('Other', (ea.EmbodimentAdapter,), {}))


def test_no_rclpy_or_torch_import():
    """Importing every adapter module works with rclpy unimportable and does not load torch."""
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        'import importlib, pkgutil, embodiment_adapters as ea\n'
        'for m in pkgutil.iter_modules(ea.__path__):\n'
        "    importlib.import_module('embodiment_adapters.' + m.name)\n"
        "ea.load_adapter('aloha')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'rclpy' not in [k for k, v in sys.modules.items() if v is not None]\n")
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, 'PYTHONPATH': str(ROOT / 'src')})
    assert result.returncode == 0, result.stderr


def test_error_split_joint_states_unknown_prefix():
    """A name that matches no topic prefix is reported with the known prefixes."""
    a = ea.load_adapter('aloha')
    with pytest.raises(ValueError, match=r"Joint 'waist' matches no joint_state_topics prefix of "
                                         r"robot 'aloha' \(\['left_', 'right_'\]\)"):
        a.split_joint_states(['waist'], [0.0])
