"""Tests of the simulated ALOHA: the MuJoCo wrapper, trajectory following and the sim node."""

import io
import json
import math
import threading
import time

from embodiment_adapters import load_adapter, load_robot_config
import numpy as np
from pi0_msgs.msg import PolicyStatus
from pi0_policy.ros import conversions
from pi0_policy.ros.sim.sim_node import (AlohaSimNode, build_routes, CLOCK_TOPIC,
                                         config_from_values, LOCKSTEP_TIMEOUT, parse_mapping,
                                         SHUTDOWN_TIMEOUT)
from pi0_policy.sim import report
from pi0_policy.sim.aloha import (
    AlohaSim, AlohaSimConfig, ARM_DOF, GripperCalibration, INTERBOTIX_ROS2_GRIPPER,
    measure_cost, select_headless_gl, SimCost, SimulationDiverged, STATE_JOINT_NAMES,
    steps_per_frame, TOP_CAMERA, TrajectoryTarget)
from PIL import Image as PilImage
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

SMALL = {'image_height': 48, 'image_width': 64}
# Position-controlled joints with stiff actuators reach a target within this (rad) in 1 s.
TRACKING_TOLERANCE = 0.05
# The gripper reaches open/closed within this (rad of gripper joint) in 1 s.
GRIPPER_TOLERANCE = 0.15
ONE_SECOND_OF_PERIODS = 50
REACH = np.array([0.3, -0.5, 0.8, 0.0, -0.3, 0.0])  # a pose inside all joint limits
STIFF_JOINTS = slice(0, 3)  # waist, shoulder, elbow (kp 800-1600)
SPIN_TIMEOUT = 10.0  # seconds


@pytest.fixture(scope='module')
def sim():
    """One small-image simulation shared by the wrapper tests (loading takes ~0.3 s)."""
    simulation = AlohaSim(AlohaSimConfig(**SMALL))
    yield simulation
    simulation.close()


def test_state_has_real_aloha_names_and_shapes(sim):
    sim.reset()
    for side in ('left', 'right'):
        state = sim.joint_state(side)
        assert state.names == STATE_JOINT_NAMES
        assert state.positions.shape == state.velocities.shape == (len(STATE_JOINT_NAMES),)
        grip = dict(zip(state.names, state.positions))
        assert INTERBOTIX_ROS2_GRIPPER.joint_closed <= grip['gripper'] <= \
            INTERBOTIX_ROS2_GRIPPER.joint_open
        assert grip['right_finger'] == -grip['left_finger']
        assert INTERBOTIX_ROS2_GRIPPER.finger_closed <= grip['left_finger'] <= \
            INTERBOTIX_ROS2_GRIPPER.finger_open


def test_render_is_rgb_of_configured_size(sim):
    image = sim.render(TOP_CAMERA)
    assert image.shape == (SMALL['image_height'], SMALL['image_width'], 3)
    assert image.dtype == np.uint8 and image.std() > 0
    assert {'top', 'left_wrist', 'right_wrist'} <= set(sim.cameras)
    with pytest.raises(ValueError, match="Camera 'nope' is not in the ALOHA scene"):
        sim.render('nope')


def test_step_tracks_arm_target_then_holds(sim):
    sim.reset()
    sim.set_arm_target('left', REACH)
    sim.step(ONE_SECOND_OF_PERIODS)
    assert sim.time == pytest.approx(ONE_SECOND_OF_PERIODS * sim.config.control_period)
    reached = sim.joint_state('left').positions[:ARM_DOF]
    np.testing.assert_allclose(reached[STIFF_JOINTS], REACH[STIFF_JOINTS],
                               atol=TRACKING_TOLERANCE)
    # No new command: the target is held and the arm stays where it is.
    sim.step(ONE_SECOND_OF_PERIODS)
    np.testing.assert_allclose(sim.arm_target('left'), REACH)
    np.testing.assert_allclose(sim.joint_state('left').positions[STIFF_JOINTS],
                               reached[STIFF_JOINTS], atol=TRACKING_TOLERANCE / 5)
    # The other arm was not commanded and stays at the start pose.
    np.testing.assert_allclose(sim.arm_target('right'), [0, -0.96, 1.16, 0, -0.3, 0])


def test_gripper_joint_command_opens_and_closes(sim):
    sim.reset()
    calibration = sim.config.gripper
    for target in (calibration.joint_open, calibration.joint_closed):
        sim.set_joint_target('right', 'gripper', target)
        sim.step(ONE_SECOND_OF_PERIODS)
        assert sim.gripper_target('right') == pytest.approx(target)
        gripper = dict(zip(STATE_JOINT_NAMES, sim.joint_state('right').positions))['gripper']
        assert gripper == pytest.approx(target, abs=GRIPPER_TOLERANCE)


def test_targets_are_clipped_to_the_actuator_range(sim):
    sim.reset()
    sim.set_arm_target('left', [10.0, -10.0, 10.0, 0.0, 0.0, 0.0])
    target = sim.arm_target('left')
    assert target[0] == pytest.approx(3.14158) and target[1] == pytest.approx(-1.85005)
    sim.set_gripper_target('left', 100.0)
    assert sim.gripper_target('left') == pytest.approx(sim.config.gripper.joint_open)


def test_bad_inputs_raise_with_the_value(sim):
    with pytest.raises(ValueError, match=r'must be 6 finite joint angles.*\[1.0, 2.0\]'):
        sim.set_arm_target('left', [1.0, 2.0])
    with pytest.raises(ValueError, match="Unknown arm side 'middle'"):
        sim.set_arm_target('middle', np.zeros(ARM_DOF))
    with pytest.raises(ValueError, match='must be finite; got nan'):
        sim.set_gripper_target('left', float('nan'))
    with pytest.raises(ValueError, match="Joint 'elbow2' cannot be commanded"):
        sim.set_joint_target('left', 'elbow2', 0.0)
    with pytest.raises(ValueError, match='periods >= 1; got 0'):
        sim.step(0)


def test_diverged_physics_raises_a_clear_error_and_reset_recovers(sim):
    sim.reset(1)
    sim._physics.data.qvel[:] = 1e20  # what a runaway command would cause
    with pytest.raises(SimulationDiverged, match=r'physics diverged at t=.*reset\(\) starts'):
        sim.step()
    sim.reset(2)
    sim.step()
    assert sim.time > 0 and np.isfinite(sim.joint_state('left').positions).all()


def test_config_and_calibration_errors():
    with pytest.raises(ValueError, match="Unknown ALOHA sim task 'juggle'"):
        AlohaSimConfig(task='juggle')
    with pytest.raises(ValueError, match=r'control_period \(0.0\) must be > 0'):
        AlohaSimConfig(control_period=0.0)
    with pytest.raises(ValueError, match='distinct open and closed values'):
        GripperCalibration(joint_open=1.0, joint_closed=1.0)
    calibration = GripperCalibration()
    assert calibration.joint_to_fraction(calibration.fraction_to_joint(0.25)) == \
        pytest.approx(0.25)
    assert calibration.joint_to_fraction(99.0) == 1.0


def test_select_headless_gl():
    assert select_headless_gl({'MUJOCO_GL': 'osmesa'}, lambda _: None) == 'osmesa'
    env: dict[str, str] = {}
    assert select_headless_gl(env, lambda lib: 'libOSMesa.so' if lib == 'OSMesa' else None) \
        == 'osmesa'
    assert env['MUJOCO_GL'] == 'osmesa'
    with pytest.raises(RuntimeError, match='needs libEGL or libOSMesa'):
        select_headless_gl({}, lambda _: None)


def test_trajectory_target_interpolates_and_holds():
    target = TrajectoryTarget(np.array([0.0, 1.0]))
    np.testing.assert_allclose(target.sample(5.0), [0.0, 1.0])  # initial value held
    target.replace(10.0, np.array([0.5, 1.0]), np.array([[1.0, 1.0], [2.0, 3.0]]), now=10.0)
    np.testing.assert_allclose(target.sample(10.25), [0.5, 1.0])  # from the held value
    np.testing.assert_allclose(target.sample(10.75), [1.5, 2.0])
    np.testing.assert_allclose(target.sample(60.0), [2.0, 3.0])  # last point held
    # A point due now applies at once.
    target.replace(20.0, np.array([0.0]), np.array([[7.0, 7.0]]), now=20.0)
    np.testing.assert_allclose(target.sample(20.0), [7.0, 7.0])
    with pytest.raises(ValueError, match='must be >= 0 and non-decreasing'):
        target.replace(0.0, np.array([1.0, 0.5]), np.zeros((2, 2)), now=0.0)
    with pytest.raises(ValueError, match=r'\(P, 2\) positions'):
        target.replace(0.0, np.array([1.0]), np.zeros((1, 3)), now=0.0)


def test_mapping_and_routes_follow_the_robot_config():
    assert parse_mapping('a=b, c=d', 'x') == {'a': 'b', 'c': 'd'}
    with pytest.raises(ValueError, match="Parameter 'x' with the value 'a=b,a=c'"):
        parse_mapping('a=b,a=c', 'x')
    robot = load_robot_config('aloha')
    routes = build_routes(robot, {'left_': 'left', 'right_': 'right'})
    assert [r.spec.topic for r in routes] == [c.topic for c in robot.commands]
    assert routes[0].joints[0] == ('left', 'waist')
    assert routes[1].joints == (('left', 'gripper'),)
    with pytest.raises(ValueError, match='starts with none of the prefixes'):
        build_routes(robot, {'left_': 'left'})
    with pytest.raises(ValueError, match=r"maps to \['up'\]"):
        build_routes(robot, {'left_': 'up'})


def _spin_until(executor, predicate, timeout=SPIN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_sim_node_serves_the_aloha_interfaces():
    """Commands on the real ALOHA topics move the simulated arm; state and images come back."""
    robot = load_robot_config('aloha')
    context = rclpy.Context()
    rclpy.init(context=context)
    sim = AlohaSimNode(context=context, parameter_overrides=[
        Parameter('image_height', value=SMALL['image_height']),
        Parameter('image_width', value=SMALL['image_width'])])
    probe = rclpy.create_node('sim_probe', context=context)
    states: dict[str, JointState] = {}
    images: dict[str, Image] = {}
    for topic in robot.joint_state_topics:
        probe.create_subscription(JointState, topic.topic,
                                  lambda m, t=topic.topic: states.__setitem__(t, m), 10)
    for cam in robot.cameras[:3]:
        probe.create_subscription(Image, cam.topic,
                                  lambda m, t=cam.topic: images.__setitem__(t, m), 10)
    arm, gripper = robot.commands[0], robot.commands[1]
    arm_pub = probe.create_publisher(type(conversions.joint_trajectory([], np.zeros(0),
                                                                       time_from_start=0.0)),
                                     arm.topic, 10)
    grip_pub = probe.create_publisher(Float64MultiArray, gripper.topic, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sim)
    executor.add_node(probe)
    try:
        left = robot.joint_state_topics[0].topic
        assert _spin_until(executor, lambda: len(states) == 2 and len(images) == 3)
        assert list(states[left].name) == list(STATE_JOINT_NAMES)
        image = images[robot.cameras[0].topic]
        assert (image.encoding, image.height, image.width) == \
            ('rgb8', SMALL['image_height'], SMALL['image_width'])
        assert conversions.to_seconds(states[left].header.stamp) > 0.0

        def send():
            arm_pub.publish(conversions.joint_trajectory(arm.joint_names, REACH,
                                                         time_from_start=0.02))
            grip_pub.publish(conversions.float64_multi_array(
                np.array([INTERBOTIX_ROS2_GRIPPER.joint_open])))
        send()

        def reached():
            positions = np.asarray(states[left].position)
            grip = dict(zip(states[left].name, positions))['gripper']
            return np.allclose(positions[STIFF_JOINTS], REACH[STIFF_JOINTS],
                               atol=TRACKING_TOLERANCE) and abs(
                grip - INTERBOTIX_ROS2_GRIPPER.joint_open) < GRIPPER_TOLERANCE
        deadline = time.monotonic() + SPIN_TIMEOUT
        while not reached() and time.monotonic() < deadline:
            send()
            _spin_until(executor, lambda: False, timeout=0.1)
        assert reached(), (f'left arm at {list(states[left].position)}; commanded {REACH} '
                           f'and gripper {INTERBOTIX_ROS2_GRIPPER.joint_open}')
        stats = sim.stats()
        assert stats['commands'] > 0 and stats['rejected'] == 0 and stats['steps'] > 0
        # A trajectory for the wrong joints is rejected, not applied.
        arm_pub.publish(conversions.joint_trajectory(['a', 'b'], np.zeros(2),
                                                     time_from_start=0.02))
        assert _spin_until(executor, lambda: sim.stats()['rejected'] == 1)
    finally:
        executor.shutdown()
        probe.destroy_node()
        sim.destroy_node()
        rclpy.try_shutdown(context=context)


def test_measure_cost_times_steps_and_frames(sim):
    encoded = []
    cost = measure_cost(sim, [TOP_CAMERA, 'left_wrist'], 5, seconds=0.1, encode=encoded.append)
    assert cost.period == sim.config.control_period and cost.steps_per_frame == 5
    assert 0.0 < cost.step_s < cost.period and cost.frame_s > 0.0
    assert len(encoded) >= 4 and encoded[0].shape == (SMALL['image_height'],
                                                      SMALL['image_width'], 3)
    assert cost.per_period_s == pytest.approx(cost.step_s + cost.frame_s / 5)
    assert cost.load == pytest.approx(cost.per_period_s / cost.period)
    no_cameras = measure_cost(sim, [], 1, seconds=0.01)
    assert no_cameras.frame_s == 0.0 and no_cameras.per_period_s == no_cameras.step_s
    with pytest.raises(ValueError, match='frame_steps >= 1 and seconds > 0; got 0 and 1.0'):
        measure_cost(sim, [], 0, seconds=1.0)
    sim.reset()


def test_steps_per_frame_and_sim_cost():
    assert steps_per_frame(0.02, 10.0) == 5
    assert steps_per_frame(0.02, 60.0) == 1  # never more than one frame per step
    with pytest.raises(ValueError, match=r'camera_rate_hz \(0.0 Hz\) must both be > 0'):
        steps_per_frame(0.02, 0.0)
    cost = SimCost(period=0.02, step_s=0.001, frame_s=0.03, steps_per_frame=5)
    assert cost.per_period_s == pytest.approx(0.007) and cost.load == pytest.approx(0.35)


def test_config_from_values_defaults_and_errors():
    config, robot = config_from_values({'sim_time': True, 'lockstep_lead': 0.05})
    assert robot.name == 'aloha' and config.sim.control_period == pytest.approx(0.02)
    assert config.camera_map['cam_high'] == TOP_CAMERA
    assert config.lockstep_periods == 2  # 0.05 s at 50 Hz: two whole periods
    assert config_from_values({'sim_time': False})[0].lockstep_periods == 0  # real time
    assert config_from_values({'sim_time': True, 'lockstep_lead': 0.0})[0].lockstep_periods == 0
    with pytest.raises(ValueError, match=r"Unknown aloha_sim parameters \['colour'\]"):
        config_from_values({'colour': 'red'})
    with pytest.raises(ValueError, match=r"names cameras \['cam_nose'\]"):
        config_from_values({'camera_map': 'cam_nose=top'})


def _sim_time_node(*extra: Parameter) -> tuple[rclpy.Context, AlohaSimNode]:
    """Return a new context and a small-image sim node on simulated time (5x real time)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    return context, AlohaSimNode(context=context, parameter_overrides=[
        Parameter('image_height', value=SMALL['image_height']),
        Parameter('image_width', value=SMALL['image_width']),
        Parameter('sim_time', value=True), Parameter('real_time_factor', value=5.0), *extra])


def test_sim_time_node_publishes_clock_and_waits_for_commands():
    """On simulated time the sim runs freely until commands come, then keeps lockstep."""
    robot = load_robot_config('aloha')
    context, sim = _sim_time_node(Parameter('lockstep_lead', value=0.02))
    probe = rclpy.create_node('sim_time_probe', context=context)
    clocks: list[int] = []
    probe.create_subscription(ClockMsg, CLOCK_TOPIC, lambda m: clocks.append(
        m.clock.sec * 1_000_000_000 + m.clock.nanosec), 100)
    grip_pub = probe.create_publisher(Float64MultiArray, robot.commands[1].topic, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sim)
    executor.add_node(probe)
    period_ns = round(sim.config.sim.control_period * 1e9)
    try:
        # No command yet: free running, faster than real time, on the control-period grid.
        assert _spin_until(executor, lambda: len(clocks) > 20)
        assert all(c % period_ns == 0 for c in clocks) and clocks == sorted(clocks)
        grip_pub.publish(conversions.float64_multi_array(
            np.array([INTERBOTIX_ROS2_GRIPPER.joint_open])))
        assert _spin_until(executor, lambda: sim.stats()['commands'] == 1)
        # One period past the command's step at most, and no further while no command comes.
        _spin_until(executor, lambda: False, timeout=0.2)
        held = sim.stats()['steps']
        _spin_until(executor, lambda: False, timeout=LOCKSTEP_TIMEOUT / 2)
        assert sim.stats()['steps'] == held and sim.stats()['lockstep_waits'] >= 1
        # Commands stopped: after LOCKSTEP_TIMEOUT the sim runs on freely.
        assert _spin_until(executor, lambda: sim.stats()['steps'] > held + 10)
        assert sim.stats()['lag_events'] == 0
    finally:
        executor.shutdown()
        probe.destroy_node()
        sim.destroy_node()
        rclpy.try_shutdown(context=context)
    # The control of the bounded-shutdown test below: a healthy sim stops cleanly.
    assert sim.stopped_cleanly


def test_sim_node_starts_a_new_episode_when_the_physics_diverges():
    context, sim = _sim_time_node()
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sim)
    try:
        assert _spin_until(executor, lambda: sim.stats()['steps'] > 5)
        first = sim.stats()
        with sim._tick_lock:  # between two steps
            sim._sim._physics.data.qvel[:] = 1e20
        assert _spin_until(executor, lambda: sim.stats()['diverged'] == 1)
        # The node lives on: the next seed's episode, and it keeps stepping.
        after = sim.stats()
        assert after['episode'] == first['episode'] + 1
        assert after['seed'] == first['seed'] + 1
        assert _spin_until(executor, lambda: sim.stats()['steps'] > after['steps'] + 5)
        assert sim.stats()['diverged'] == 1
    finally:
        executor.shutdown()
        sim.destroy_node()
        rclpy.try_shutdown(context=context)


def test_sim_node_shutdown_is_bounded_when_a_step_hangs():
    # A step that never returns (here: its lock held by another thread) used to make
    # destroy_node join forever, and launch SIGKILLed the sim. Now each wait is bounded.
    context, sim = _sim_time_node()
    hang = threading.Event()
    held = threading.Event()

    def hung_step():
        with sim._tick_lock:
            held.set()
            hang.wait(60.0)

    staller = threading.Thread(target=hung_step, daemon=True)
    staller.start()
    destroyer = threading.Thread(target=sim.destroy_node, daemon=True)
    try:
        assert held.wait(10.0)
        destroyer.start()
        # Two waits of SHUTDOWN_TIMEOUT each, plus slack for a loaded machine.
        destroyer.join(2 * SHUTDOWN_TIMEOUT + 20.0)
        assert not destroyer.is_alive(), 'destroy_node did not return'
        assert not sim.stopped_cleanly
    finally:
        hang.set()
        staller.join(10.0)
        sim._sim.close()  # the scene left behind: free it here
        rclpy.try_shutdown(context=context)


# -- report writers (pi0_policy.sim.report) ----------------------------------------------------

REPORT_FRAMES = 4
REPORT_WALL = 2.0  # seconds recorded
MP4_BOX = b'ftyp'  # an MP4 file starts with a 'ftyp' box at byte 4


def _report_records():
    names = ['left_waist', 'left_gripper']
    # The gripper command is below ALOHA's lower limit (0.6197 rad): one violation.
    commands = {'left_waist': [(0.0, 0.1), (1.0, 0.4)], 'left_gripper': [(0.5, 0.02)]}
    measured = {'left_waist': [(0.0, 0.0), (1.0, 0.3), (2.0, 0.25)]}
    frames = [np.full((16, 24, 3), 40 * k, np.uint8) for k in range(REPORT_FRAMES)]
    return names, commands, measured, frames


def test_report_writes_plot_and_video(tmp_path):
    names, commands, measured, frames = _report_records()
    gif = report.write_media(tmp_path, names, commands, measured, frames, REPORT_WALL, 'gif')
    assert gif == tmp_path / f'{report.VIDEO_STEM}.gif'
    with PilImage.open(gif) as video:
        assert video.n_frames == REPORT_FRAMES and video.size == (24, 16)
    with PilImage.open(tmp_path / report.PLOT_FILE) as plot:
        assert plot.format == 'PNG' and plot.width > 0
    mp4 = report.write_video(tmp_path / 'clip.mp4', frames, fps=report.MIN_FPS)
    assert mp4.exists() and (mp4.suffix == '.gif' or mp4.read_bytes()[4:8] == MP4_BOX)
    (tmp_path / report.PLOT_FILE).unlink()
    assert report.write_media(tmp_path, names, commands, measured, [], REPORT_WALL, 'gif') is None
    assert (tmp_path / report.PLOT_FILE).exists()


def test_report_summary_numbers_file_and_printout(tmp_path):
    names, commands, measured, _ = _report_records()
    adapter = load_adapter('aloha')
    status = PolicyStatus(state_name='active: running', ticks=100, control_rate_achieved=49.5,
                          control_rate_target=50.0, hold_ticks=3, clamped_commands=2,
                          inference_failures=1)
    policy = report.policy_summary(status, {'active': 7})
    assert report.policy_summary(None, {})['final_state'] == 'no status received'
    motion = report.joint_motion(names, measured)
    assert motion == {'left_waist': pytest.approx(0.3)}
    run = {'checkpoint': 'tiny random model', 'prompt': 'wave', 'clock': 'real time'}
    topic = adapter.commands[0].topic
    violations = report.limit_violations(adapter, commands)
    assert violations == [('left_gripper', 0.02)]
    summary = report.build_summary(
        wall=REPORT_WALL, run=run, policy=policy, latencies=[0.1, 0.2, 0.3],
        messages={topic: 100}, rate_topic=topic, violations=len(violations),
        sim_stats={'steps': 10.0}, motion=motion, out=tmp_path, video=None)
    assert list(summary)[:4] == ['duration_s', 'checkpoint', 'prompt', 'clock']
    assert summary['commands'] == {'messages': {topic: 100}, 'rate_hz': 50.0,
                                   'limit_violations': 1}
    assert summary['inference']['latency_p50_ms'] == pytest.approx(200.0)
    assert summary['policy']['ticks'] == 100 and summary['policy']['states_seen'] == {'active': 7}
    assert summary['files']['video'] is None
    path = report.write_summary(summary, tmp_path)
    assert path == tmp_path / report.SUMMARY_FILE and json.loads(path.read_text()) == summary
    printed = io.StringIO()
    report.log_summary(summary, lambda line: print(line, file=printed))
    text = printed.getvalue()
    assert 'control ticks 100, achieved 49.5 Hz of 50 Hz; commands 50.0 msg/s' in text
    assert 'latency p50 200 ms' in text and 'sim: 10 steps = nan s simulated (nan Hz' in text
    assert all(math.isnan(v) for v in report.percentiles_ms([]).values())


def test_window_stats_counts_only_the_recorded_window():
    first = {'steps': 100.0, 'lag_events': 3.0, 'sim_time': 2.0, 'wall_time': 4.0,
             'render_ms_mean': 9.0}
    last = {'steps': 350.0, 'lag_events': 3.0, 'sim_time': 7.0, 'wall_time': 9.0,
            'render_ms_mean': 10.0, 'step_rate_hz': 38.9, 'real_time_factor': 0.78}
    window = report.window_stats(first, last)
    assert window['steps'] == 250.0 and window['lag_events'] == 0.0
    assert window['step_rate_hz'] == pytest.approx(50.0)  # 250 steps in 5 s
    assert window['real_time_factor'] == pytest.approx(1.0)  # 5 s simulated in 5 s
    assert window['render_ms_mean'] == 10.0  # not a counter: the last value
    assert report.window_stats({}, last)['steps'] == 350.0  # no first report: since the start
    assert report.window_stats({}, {}) == {}
