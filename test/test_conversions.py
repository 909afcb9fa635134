"""Tests of the ROS message conversions (messages built by hand, no Node)."""

import math
import struct
import sys
import threading
import zlib

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from embodiment_adapters import load_robot_config, make_adapter
from embodiment_adapters.config import find_robot_config
from nav_msgs.msg import Odometry
import numpy as np
from openpi_client import image_tools
from pi0_policy.ros import commands, conversions, diagnostics, observation, visualization
from pi0_policy.runtime import inputs, status, transforms
from pi0_policy.runtime.session import clean_instruction
import pytest
from sensor_msgs.msg import CompressedImage, Image, JointState
import yaml

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)  # (H, W, 3)
MODEL_SIZE = 224


@pytest.mark.parametrize('encoding', sorted(conversions.ENCODING_CHANNELS))
@pytest.mark.parametrize('padding', [0, 3])
def test_builtin_image_round_trip_every_encoding(encoding, padding):
    msg = conversions.rgb_to_image(RGB, encoding=encoding, padding=padding)
    assert msg.step == RGB.shape[1] * conversions.ENCODING_CHANNELS[encoding] + padding
    rgb = conversions.image_to_rgb(msg, use_cv_bridge=False)
    copied = conversions.image_to_rgb(msg, use_cv_bridge=False, copy=True)
    assert rgb.shape == RGB.shape and rgb.dtype == np.uint8 and not rgb.flags.writeable
    assert copied.flags.c_contiguous and copied.flags.writeable and copied.flags.owndata
    expected = RGB
    if encoding == 'mono8':
        gray = RGB.mean(axis=2).round().astype(np.uint8)
        expected = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(copied, expected)


@pytest.mark.parametrize('encoding', sorted(conversions.ENCODING_CHANNELS))
def test_builtin_decoding_is_a_view_of_the_message(encoding):
    msg = conversions.rgb_to_image(RGB, encoding=encoding)
    rgb = conversions.image_to_rgb(msg, use_cv_bridge=False)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))  # no copy of the pixels
    with pytest.raises(ValueError, match='read-only'):
        rgb[0, 0, 0] = 0  # writing would change the message


@pytest.mark.parametrize('encoding', sorted(conversions.ENCODING_CHANNELS))
def test_decoded_views_resize_like_openpi_client(encoding):
    rgb = np.random.default_rng(3).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    msg = conversions.rgb_to_image(rgb, encoding=encoding, padding=1)
    expected = conversions.image_to_rgb(msg, use_cv_bridge=False, copy=True)
    view = conversions.image_to_rgb(msg, use_cv_bridge=False)
    np.testing.assert_array_equal(transforms.resize_with_pad(view, MODEL_SIZE, MODEL_SIZE),
                                  image_tools.resize_with_pad(expected, MODEL_SIZE, MODEL_SIZE))


def test_bgr8_bytes_are_swapped_by_hand():
    msg = Image(height=1, width=1, encoding='bgr8', step=3, data=bytes([1, 2, 3]))
    np.testing.assert_array_equal(conversions.image_to_rgb(msg, use_cv_bridge=False)[0, 0],
                                  [3, 2, 1])


@pytest.mark.skipif(not conversions.cv_bridge_available(), reason='cv_bridge not importable')
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_builtin_path_equals_cv_bridge(encoding):
    msg = conversions.rgb_to_image(RGB, encoding=encoding, padding=2)
    np.testing.assert_array_equal(conversions.image_to_rgb(msg, use_cv_bridge=False),
                                  conversions.image_to_rgb(msg, use_cv_bridge=True))


@pytest.mark.parametrize('change, message', [
    ({'encoding': '16UC1'}, "encoding '16UC1' is not supported"),
    ({'width': 0}, 'expected a non-empty image'),
    ({'step': 14}, 'step 14 is shorter than one row'),
    ({'height': 7}, 'Image data is truncated'),
])
def test_malformed_images_raise_clear_errors(change, message):
    msg = conversions.rgb_to_image(RGB)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=message):
        conversions.image_to_rgb(msg, use_cv_bridge=False)


@pytest.mark.skipif(conversions.cv_bridge_available(), reason='cv_bridge is installed here')
def test_use_cv_bridge_without_cv_bridge_says_what_to_install():
    with pytest.raises(ValueError, match='cv_bridge is not importable'):
        conversions.image_to_rgb(conversions.rgb_to_image(RGB), use_cv_bridge=True)


def test_png_round_trip_is_exact_and_jpeg_is_close():
    png = conversions.rgb_to_compressed(RGB, fmt='png')
    np.testing.assert_array_equal(conversions.compressed_to_rgb(png), RGB)
    smooth = np.full((16, 16, 3), 120, np.uint8)
    jpeg = conversions.rgb_to_compressed(smooth, fmt='jpeg')
    assert np.abs(conversions.compressed_to_rgb(jpeg).astype(int) - 120).max() <= 2


def test_compressed_format_comes_from_magic_bytes_when_format_is_empty():
    png = conversions.rgb_to_compressed(RGB, fmt='png')
    png.format = ''
    np.testing.assert_array_equal(conversions.compressed_to_rgb(png), RGB)


def test_bad_compressed_images_raise():
    with pytest.raises(ValueError, match='not supported; expected JPEG or PNG'):
        conversions.compressed_to_rgb(CompressedImage(format='tiff', data=b'II*\x00'))
    truncated = conversions.rgb_to_compressed(RGB, fmt='png')
    truncated.data = bytes(truncated.data[:30])
    with pytest.raises(ValueError, match='does not decode as PNG'):
        conversions.compressed_to_rgb(truncated)


def test_joint_state_prefix_and_merge():
    left = JointState(name=['a', 'b'], position=[1.0, 2.0])
    right = JointState(name=['a'], position=[3.0])
    parts = [conversions.joint_state_to_arrays(left, prefix='left_'),
             conversions.joint_state_to_arrays(right, prefix='right_')]
    names, positions = inputs.merge_joint_states(parts)
    assert names == ('left_a', 'left_b', 'right_a')
    np.testing.assert_array_equal(positions, [1.0, 2.0, 3.0])


@pytest.mark.parametrize('msg, message', [
    (JointState(name=['a', 'b'], position=[1.0]), '2 names but 1 positions'),
    (JointState(name=['a', ''], position=[1.0, 2.0]), 'empty joint name'),
    (JointState(name=['a', 'a'], position=[1.0, 2.0]), 'repeats joint names'),
])
def test_malformed_joint_states_raise(msg, message):
    with pytest.raises(ValueError, match=message):
        conversions.joint_state_to_arrays(msg)


def test_nan_positions_pass_the_message_check_and_only_used_joints_matter():
    # Drivers publish NaN for passive / mimic joints; the adapter checks the joints it uses.
    adapter = make_adapter(load_robot_config('mock'))
    example = adapter.make_example(np.random.default_rng(0))
    msg = JointState(name=list(example['names']) + ['passive'],
                     position=list(example['positions']) + [math.nan])
    names, positions = conversions.joint_state_to_arrays(msg)
    assert names[-1] == 'passive' and math.isnan(positions[-1])
    assert np.isfinite(adapter.state_from_joint_states(names, positions)).all()
    positions[0] = math.nan
    with pytest.raises(ValueError, match='non-finite positions'):
        adapter.state_from_joint_states(names, positions)


@pytest.mark.parametrize('topic, relative', [
    ('/camera high/image', False), ('/cam//image', False), ('/1cam/image', False),
    ('/camera_high/image_raw', True), ('~/status', True), ('joint_states', True)])
def test_topic_names_are_checked(topic, relative):
    if relative:
        full = conversions.check_topic_name(topic, 'camera', node_name='n', namespace='/ns')
        assert full.startswith('/') and full.endswith(topic.lstrip('~/'))
        return
    with pytest.raises(ValueError, match=f"Topic '{topic}' of camera 'c' is not a valid ROS "
                                         'topic name'):
        conversions.check_topic_name(topic, "camera 'c'", node_name='n', namespace='/ns')


def test_odometry_twist_and_nan():
    odom = Odometry()
    odom.twist.twist.linear.x, odom.twist.twist.angular.z = 0.5, -0.25
    np.testing.assert_array_equal(conversions.odometry_to_base_velocity(odom), [0.5, 0.0, -0.25])
    odom.twist.twist.linear.y = math.inf
    with pytest.raises(ValueError, match='not finite'):
        conversions.odometry_to_base_velocity(odom)


def test_command_builders():
    trajectory = conversions.joint_trajectory(['j1', 'j2'], np.array([0.1, 0.2]),
                                              time_from_start=0.02)
    assert trajectory.joint_names == ['j1', 'j2']
    assert list(trajectory.points[0].positions) == [0.1, 0.2]
    assert trajectory.points[0].time_from_start.nanosec == 20_000_000
    assert list(conversions.float64_multi_array(np.array([1.5])).data) == [1.5]
    twist = conversions.twist(['linear_x', 'angular_z'], np.array([0.3, -0.1]))
    assert (twist.linear.x, twist.linear.y, twist.angular.z) == (0.3, 0.0, -0.1)
    stamped = conversions.twist_stamped(['linear_y'], np.array([0.2]), stamp=Time(sec=3),
                                        frame_id='base')
    assert stamped.twist.linear.y == 0.2 and stamped.header.frame_id == 'base'
    with pytest.raises(ValueError, match="Base axis 'up' is not a Twist field"):
        conversions.twist(['up'], np.array([1.0]))


def test_instruction_checks():
    assert clean_instruction('  fold the towel \n', 100) == 'fold the towel'
    with pytest.raises(ValueError, match='is empty'):
        clean_instruction('   ', 100)
    with pytest.raises(ValueError, match='10000 characters; expected at most 2000'):
        clean_instruction('x' * 10_000, 2000)


def test_action_chunk_message_and_shape_error():
    actions = RNG.normal(size=(4, 2))
    msg = conversions.action_chunk(
        stamp=Time(sec=1), embodiment='mock', sequence=3, instruction='go', control_period=0.02,
        joint_names=['a', 'b'], actions=actions, unified_names=['u'] * 3,
        unified_actions=np.zeros((4, 3)), inference_latency=0.1)
    assert (msg.horizon, msg.dof, msg.unified_dof, msg.sequence) == (4, 2, 3, 3)
    np.testing.assert_allclose(np.reshape(msg.actions, (4, 2)), actions)
    with pytest.raises(ValueError, match=r'expected \(horizon, 3\)'):
        conversions.action_chunk(
            stamp=Time(), embodiment='mock', sequence=0, instruction='', control_period=0.02,
            joint_names=['a', 'b', 'c'], actions=actions, unified_names=[],
            unified_actions=np.zeros((4, 0)), inference_latency=0.0)


def test_time_conversions_round_trip():
    assert conversions.to_seconds(conversions.to_time(12.345678901)) == pytest.approx(12.345678901)
    assert conversions.to_duration(0.02).nanosec == 20_000_000


def test_command_router_for_a_mobile_manipulator():
    adapter = make_adapter(load_robot_config('mobile_manipulator'))
    router = commands.CommandRouter(adapter.commands, adapter.action_names, adapter.config.base,
                                    control_period=0.02, base_frame_id='base_footprint')
    command = np.linspace(0.0, 0.1, adapter.dof)
    messages = router.messages(command, Time(sec=5))
    assert len(messages) == len(adapter.commands)
    for spec, msg in zip(router.specs, messages):
        assert isinstance(msg, commands.MESSAGE_TYPES[spec.type])
    base = messages[-1]
    assert base.twist.linear.x == command[-3] and base.twist.angular.z == command[-1]
    held = router.messages(None, Time(sec=5))
    assert held[:-1] == [None] * (len(held) - 1) and held[-1].twist.linear.x == 0.0


def test_observation_buffer_names_the_problem_input():
    buffer = inputs.ObservationBuffer(['cam', 'joints', 'wrist'], 0.1,
                                      required=['cam', 'joints'])
    assert buffer.problem(0.0) == 'cam has not been received'
    buffer.put('cam', 'image', 1.0)
    buffer.put('joints', 'state', 1.0)
    assert buffer.problem(1.05) is None
    assert buffer.ages(1.05) == pytest.approx((0.05, 0.05, inputs.NEVER_RECEIVED))
    assert buffer.problem(1.2) == 'cam is 0.200 s old (max_age 0.100 s)'
    buffer.put('cam', 'image', 1.2)
    buffer.reject('joints', 'NaN')
    assert buffer.problem(1.2) == 'joints is invalid: NaN'
    assert 'joints' not in buffer.snapshot()
    with pytest.raises(ValueError, match='max_age is 0'):
        inputs.ObservationBuffer(['a'], 0)


def test_status_and_diagnostics_messages():
    snapshot = status.StatusSnapshot(
        state=status.NodeState.HOLDING, detail="camera 'cam' is 0.3 s old",
        embodiment='mock', instruction='go', enabled=True, latency_last=0.1, latency_p50=0.1,
        latency_p99=0.2, rate_achieved=49.0, rate_target=50.0, input_names=('cam', 'joints'),
        input_ages=(0.3, inputs.NEVER_RECEIVED), max_age=0.2, chunk_sequence=2,
        chunk_index=3, chunk_length=50, chunk_age=0.1, last_error='', ticks=10, hold_ticks=2,
        clamped_commands=1, inference_failures=0)
    msg = diagnostics.policy_status(snapshot, Time(sec=1))
    assert msg.state == msg.STATE_HOLDING and msg.state_name == 'HOLDING'
    array = diagnostics.diagnostic_array(snapshot, Time(sec=1), '/pi0')
    levels = [s.level for s in array.status]
    assert levels == [DiagnosticStatus.WARN, DiagnosticStatus.STALE, DiagnosticStatus.STALE]
    assert "camera 'cam'" in array.status[0].message
    window = status.LatencyWindow(3)
    for value in (1.0, 2.0, 3.0, 4.0):
        window.add(value)
    assert (window.last, window.percentile(50)) == (4.0, 3.0)


def test_robot_topics_are_checked_before_use(tmp_path):
    data = yaml.safe_load(find_robot_config('aloha').read_text())
    data['commands'][1]['topic'] = '/follower_left/gripper controller/commands'
    path = tmp_path / 'aloha.yaml'
    path.write_text(yaml.safe_dump(data))
    adapter = make_adapter(load_robot_config(str(path)))
    specs = inputs.input_specs(adapter, '/odom')
    with pytest.raises(ValueError, match=r"'/follower_left/gripper controller/commands' of "
                                         r'command forward_position \(robot config .*aloha'):
        observation.check_topics(adapter, specs, node_name='n', namespace='/')
    good = make_adapter(load_robot_config('aloha'))
    observation.check_topics(good, inputs.input_specs(good, '/odom'), node_name='n',
                             namespace='/')


def test_ghosts_use_the_robots_joint_names_per_joint_state_topic():
    aloha = make_adapter(load_robot_config('aloha'))
    groups = visualization.ghost_groups(aloha)
    assert [g.topic for g in groups] == ['~/preview/follower_left/joint_states',
                                         '~/preview/follower_right/joint_states']
    arm = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate', 'gripper')
    assert groups[0].names == arm and groups[1].names == arm
    assert groups[0].dims == tuple(range(7)) and groups[1].dims == tuple(range(7, 14))
    actions = np.arange(2 * aloha.dof, dtype=float).reshape(2, aloha.dof)  # (T, D)
    left, right = visualization.ghost_joint_states(groups, actions, stamp=Time(sec=2))
    assert list(left.position) == actions[-1, :7].tolist() and left.header.stamp.sec == 2
    assert list(right.position) == actions[-1, 7:].tolist()
    mobile = make_adapter(load_robot_config('mobile_manipulator'))
    (group,) = visualization.ghost_groups(mobile)  # one joint-state topic, base dims left out
    assert group.topic == '~/preview/joint_states'
    assert group.names == tuple(n for n, v in zip(mobile.action_names, mobile.is_velocity)
                                if not v)


def test_preview_messages():
    names = ['j1', 'j2', 'base_vx']
    actions = np.array([[0.0, 1.0, 0.5], [0.5, 0.0, 0.5]])
    markers = visualization.trajectory_markers(
        names, actions, control_period=0.02, lower=np.array([0.0, 0.0, -1.0]),
        upper=np.array([1.0, 1.0, 1.0]), is_velocity=np.array([False, False, True]),
        stamp=Time())
    assert markers.markers[0].action == markers.markers[0].DELETEALL
    strips = [m for m in markers.markers if m.ns == visualization.TRAJECTORY_NAMESPACE]
    assert len(strips) == 2 and len(strips[0].points) == 2
    assert strips[1].points[0].z == pytest.approx(0.2)  # j2 at its upper limit: top of the lane


def _samples(names, positions):
    msg = JointState(name=list(names), position=list(positions))
    spec = inputs.InputSpec('joints', inputs.InputKind.JOINT_STATES, '/j')
    return (spec,), {'joints': inputs.InputSample(observation.check_message(spec, msg),
                                                  0.0)}


def test_measured_gripper_command_comes_from_the_gripper_joint_or_its_calibration():
    adapter = make_adapter(load_robot_config('aloha'))
    joints = {j.name: j for j in adapter.config.joints}
    left = joints['left_gripper'].gripper
    example = adapter.make_example(np.random.default_rng(1))
    values = dict(zip(example['names'], example['positions']))
    # The robot publishes its gripper joint: the hold keeps exactly that value.
    specs, samples = _samples(values, values.values())
    command = inputs.measured_command(adapter, specs, samples)
    gripper = adapter.action_names.index('left_gripper')
    assert command[gripper] == values['left_gripper']
    assert command[0] == values['left_waist']  # arm joints as measured (no sign flips)
    # Without it: the finger opening fraction maps onto the command joint's open/closed values.
    for finger, expected in ((left.state_open_value, left.open_value),
                             (left.state_closed_value, left.closed_value)):
        values[left.state_joint] = finger
        names = [n for n in values if not n.endswith('_gripper')]
        specs, samples = _samples(names, [values[n] for n in names])
        command = inputs.measured_command(adapter, specs, samples)
        assert command[gripper] == pytest.approx(expected)


def test_measured_command_is_none_without_fresh_finite_joints():
    adapter = make_adapter(load_robot_config('mock'))
    example = adapter.make_example(np.random.default_rng(2))
    positions = np.array(example['positions'])
    positions[0] = math.nan
    specs, samples = _samples(example['names'], positions)
    assert inputs.measured_command(adapter, specs, samples) is None
    buffer = inputs.ObservationBuffer(['joints'], 0.1)
    buffer.put('joints', samples['joints'].message, 1.0)
    assert 'joints' in buffer.snapshot(1.05) and buffer.snapshot(1.2) == {}
    assert 'joints' in buffer.snapshot()  # without a time: every valid sample


def test_rate_meter_survives_concurrent_ticks_and_reads():
    meter = status.RateMeter(0.01)
    stop = threading.Event()
    errors = []

    def tick():
        t = 0.0
        while not stop.is_set():
            t += 0.0001
            meter.tick(t)

    def read():
        try:
            for _ in range(20_000):
                meter.rate(1.0)
        except RuntimeError as error:  # 'deque mutated during iteration' without the lock
            errors.append(error)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        read()
    finally:
        stop.set()
        ticker.join()
        sys.setswitchinterval(interval)
    assert errors == []
    meter = status.RateMeter(0.01)
    meter.tick(5.0)
    meter.tick(5.005)
    assert meter.rate(5.005) == pytest.approx(2 / 0.01)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))


def _png_header(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header claims width x height (RGB, 8 bit)."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr)
            + _png_chunk(b'IDAT', zlib.compress(b'')) + _png_chunk(b'IEND', b''))


def test_image_size_is_bounded_before_decoding():
    bomb = CompressedImage(format='png', data=_png_header(10_000, 9_000))  # 90 megapixels
    assert conversions.compressed_size(bomb) == (10_000, 9_000)
    with pytest.raises(ValueError, match=r'10000x9000 = 90.0 megapixels; expected at most 16.8'):
        conversions.compressed_to_rgb(bomb, max_pixels=4096 * 4096)
    spec = inputs.InputSpec("camera 'cam'", inputs.InputKind.COMPRESSED_IMAGE, '/cam')
    with pytest.raises(inputs.InputError, match='max_image_pixels'):
        observation.check_message(spec, bomb, max_pixels=4096 * 4096)
    raw = conversions.rgb_to_image(RGB)
    height, width = RGB.shape[:2]
    conversions.validate_image(raw, max_pixels=height * width)  # exactly at the bound
    with pytest.raises(ValueError, match='megapixels'):
        conversions.validate_image(raw, max_pixels=height * width - 1)
    small = conversions.rgb_to_compressed(RGB, fmt='png')
    assert conversions.compressed_to_rgb(small, max_pixels=height * width).shape == RGB.shape
