"""Scripted transfer-cube demonstrations: waypoints, reward stages, a real episode in MuJoCo."""

import math

from embodiment_adapters import load_adapter
import numpy as np
from pi0_policy.data.reader import DatasetReader
from pi0_policy.data.writer import DatasetWriter
from pi0_policy.sim import demonstrations, scripted
from pi0_policy.sim.aloha import (AlohaSim, AlohaSimConfig, ARM_JOINT_NAMES, CUBE_GEOM,
                                  LEFT_GRIPPER_FINGER_GEOM, RIGHT_GRIPPER_FINGER_GEOM, TABLE_GEOM,
                                  transfer_cube_stage)
import pytest

# A cube pose the scripted controller solves (seeds differ only in the cube pose).
SEED = 1000


def _pairs(*pairs):
    return {p for a, b in pairs for p in ((a, b), (b, a))}


def test_transfer_cube_stages_follow_gym_aloha():
    assert transfer_cube_stage(set()) == 0
    assert transfer_cube_stage(_pairs((CUBE_GEOM, RIGHT_GRIPPER_FINGER_GEOM),
                                      (CUBE_GEOM, TABLE_GEOM))) == 1
    assert transfer_cube_stage(_pairs((CUBE_GEOM, RIGHT_GRIPPER_FINGER_GEOM))) == 2
    assert transfer_cube_stage(_pairs((CUBE_GEOM, LEFT_GRIPPER_FINGER_GEOM),
                                      (CUBE_GEOM, TABLE_GEOM))) == 3
    assert transfer_cube_stage(_pairs((CUBE_GEOM, LEFT_GRIPPER_FINGER_GEOM),
                                      (CUBE_GEOM, RIGHT_GRIPPER_FINGER_GEOM))) == 4


def test_quaternion_helpers():
    quarter = scripted.axis_angle_quat([0.0, 0.0, 1.0], 90.0)
    np.testing.assert_allclose(quarter, [math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)])
    half = scripted.quat_multiply(quarter, quarter)
    np.testing.assert_allclose(half, scripted.axis_angle_quat([0.0, 0.0, 1.0], 180.0),
                               atol=1e-12)


def test_pose_at_interpolates_and_holds():
    a = scripted.Waypoint(10, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), 0.0)
    b = scripted.Waypoint(20, (1.0, 2.0, 0.0), tuple(scripted.axis_angle_quat([1, 0, 0], 90)),
                          1.0)
    xyz, quat, grip = scripted.pose_at([a, b], 15)
    np.testing.assert_allclose(xyz, [0.5, 1.0, 0.0])
    assert grip == pytest.approx(0.5)
    assert np.linalg.norm(quat) == pytest.approx(1.0)
    assert scripted.pose_at([a, b], 0)[2] == 0.0  # before the first waypoint: held
    np.testing.assert_allclose(scripted.pose_at([a, b], 99)[0], b.xyz)  # after the last: held


def test_stage_report_rates_and_held_success():
    rewards = [[0, 1, 2, 4], [0] * 3 + [4] * scripted.HOLD_STEPS, [0, 1, 1, 1]]
    report = scripted.StageReport.from_rewards(rewards)
    assert report.max_rewards == (4, 4, 1)
    assert report.success_rate == pytest.approx(2 / 3)
    assert report.held_rate == pytest.approx(1 / 3)  # one step at stage 4 does not hold
    assert report.stage_rate(1) == 1.0
    summary = report.as_dict()
    assert summary['stages']['lifted'] == pytest.approx(2 / 3)
    assert 'held' in report.describe()
    assert math.isnan(scripted.StageReport(()).success_rate)


def test_short_episode_is_rejected():
    start = scripted.Waypoint(0, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match='>= 100 steps'):
        scripted.transfer_cube_waypoints([0.1, 0.5, 0.05], start, start, steps=50)


@pytest.fixture(scope='module')
def sim():
    sim = AlohaSim(AlohaSimConfig(image_height=32, image_width=32))
    yield sim
    sim.close()


def test_scripted_controller_transfers_the_cube(sim):
    scene = scripted.EndEffectorScene()
    try:
        episode = scripted.plan_transfer_cube(SEED, scene=scene, sim=sim)
    finally:
        scene.close()
    assert episode.steps == scripted.EPISODE_STEPS
    assert episode.planned_reward == 4
    commands = episode.commands()
    assert commands.shape == (scripted.EPISODE_STEPS, 14)
    assert np.all(np.isfinite(commands))
    # The replay in a freshly reset sim repeats the planned run step for step.
    rewards = scripted.replay(sim, episode)
    assert max(rewards) == 4
    assert scripted.held_success(rewards)
    # Stages come in order: the right arm lifts the cube before the left arm holds it.
    assert rewards.index(2) < rewards.index(4)


# A cube pose whose plan, without the wrist roll spring, turned the right forearm to -3 rad.
DRIFT_SEED = 20001


def test_wrist_roll_joints_stay_near_the_start_pose():
    scene = scripted.EndEffectorScene()
    try:
        episode = scripted.plan_transfer_cube(DRIFT_SEED, scene=scene)
    finally:
        scene.close()
    assert episode.planned_reward == 4
    rolls = [ARM_JOINT_NAMES.index(name) for name in scripted.WRIST_ROLL_JOINTS]
    for arm in (episode.left_arm, episode.right_arm):
        # Within 0.5 rad of the start pose (0 rad); 3 rad without the spring.
        assert np.abs(arm[:, rolls]).max() < 0.5


def test_recorded_episodes_go_into_a_lerobot_dataset(tmp_path):
    adapter = load_adapter(demonstrations.ROBOT)
    rng = np.random.default_rng(0)
    steps = 12
    record = demonstrations.EpisodeRecord(
        seed=5, images=rng.integers(0, 256, (steps, 16, 24, 3), dtype=np.uint8),
        state=rng.standard_normal((steps, len(adapter.state_names))),
        actions=rng.standard_normal((steps, len(adapter.action_names))),
        rewards=np.array([0] * 6 + [4] * 6))
    assert record.max_reward == 4 and not record.success  # 6 steps at stage 4 do not hold
    writer = DatasetWriter(tmp_path, demonstrations.dataset_spec(adapter, 16, 24))
    demonstrations.write_episode(writer, record)
    reader = DatasetReader(tmp_path)
    assert (reader.fps, reader.num_episodes, reader.cameras) == (50, 1, ('cam_high',))
    episode = reader.episode(0)
    np.testing.assert_allclose(episode.action, record.actions, atol=1e-6)
    np.testing.assert_allclose(episode.state, record.state, atol=1e-6)
    assert episode.task == demonstrations.DEFAULT_PROMPT
    assert reader.episode_meta(0)['recording/max_reward'] == 4
