"""
Scripted demonstrations of gym-aloha's transfer-cube task (pure Python, no rclpy).

The recipe of the ACT work: plan the motion in the sim's end-effector scene, where a mocap body
is welded to each gripper and simply moved along waypoints computed from the cube's randomised
pose; record the joint angles the arms take there; then replay that joint trajectory as position
commands in the joint-space scene (:class:`pi0_policy.sim.aloha.AlohaSim`), which is what a
policy, a teleoperator or the ROS 2 sim node drives. The right arm picks the cube up, carries it
to the middle of the table, sets it down and lets go; the left arm picks it up there and lifts
it (gym-aloha's final stage: the left gripper holds the cube off the table). The hand-over goes
through the table rather than mid-air: with gym-aloha 0.1.5 on MuJoCo 3 the mid-air hand-over
of the ACT waypoints dropped the cube in most episodes. The joint trajectory is planned in
lockstep with the joint-space sim (:func:`plan_transfer_cube`), so the left arm aims at the cube
where the replay will have it; a replay then repeats the planned run exactly.

Units: arm joints in rad; grippers as an opening fraction (0 closed .. 1 open) until converted
to the robot's gripper joint (rad) by :meth:`ScriptedEpisode.commands`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import math

import numpy as np

from pi0_policy.sim.aloha import (
    AlohaSim, ARM_DOF, ARM_JOINT_NAMES, GripperCalibration, INTERBOTIX_ROS2_GRIPPER,
    SCENE_ARM_PREFIX, select_headless_gl, SIDES, task_reward, TRANSFER_CUBE_MAX_REWARD)

# Control periods of one episode (gym-aloha: 400 steps of 0.02 s = 8 s).
EPISODE_STEPS = 400
# Gripper link body of each arm in the scenes; the end-effector scene welds a mocap body to it.
GRIPPER_BODY = 'vx300s_{side}/gripper_link'
END_EFFECTOR_SCENE = 'bimanual_viperx_end_effector_transfer_cube.xml'
CUBE_JOINT = 'red_box_joint'
OPEN, CLOSED = 1.0, 0.0
# Orientation of both mocap bodies at the start of an episode (w, x, y, z).
MOCAP_START_QUAT = (1.0, 0.0, 0.0, 0.0)
# Height of a gripper's mocap relative to the cube (at its sampled height) when grasping it (m).
PICK_DZ = -0.055
# Pitch of both grippers while picking (degrees, down).
PITCH = 60.0
# Gripper offsets from the cube: above it, set down (a little above the pick height), lift.
ABOVE = np.array([0.0, 0.0, 0.08])
SET_DOWN = np.array([0.0, 0.0, 0.005])
LIFT = np.array([0.0, 0.0, 0.15])
# Where the right arm sets the cube down for the left arm (table centre, m).
HANDOVER_XY = (0.0, 0.5)
# Where each gripper waits / goes relative to the hand-over spot.
LEFT_WAIT = np.array([-0.12, 0.0, 0.12])
RIGHT_AWAY = np.array([0.12, 0.0, 0.2])
# Cube height as sampled, and its half size: it settles on the table at the half size (m).
SAMPLED_CUBE_Z = 0.05
CUBE_HALF_SIZE = 0.02
# Step (of 400) at which the cube lies at the spot and the right gripper has let go.
LEFT_PICK_STEP = 260
# Joints of one arm in the scenes' qpos: 6 arm joints, then the two fingers.
ARM_QPOS = 8
# The two wrist roll joints of each arm, and the stiffness (N m / rad) of a spring that holds them
# at the start pose (gym-aloha's START_ARM_POSE) in the end-effector scene. Near a level wrist
# their axes line up, so only their sum is fixed by the mocap: without the spring the weld drifts
# them in opposite directions, to +-3 rad in some episodes (measured over seeds 20000-20009), a
# motion the camera cannot predict, which swamped the demonstrations' loss. With it they stay
# within 0.25 rad and more plans succeed (98.6 % of 210 against 90-95 %).
WRIST_ROLL_JOINTS = ('forearm_roll', 'wrist_rotate')
WRIST_ROLL_STIFFNESS = 20.0


@dataclass(frozen=True)
class Waypoint:
    """A gripper pose reached at a control step; poses between waypoints are interpolated."""

    # Control step at which the pose is reached.
    step: int
    # (3,) gripper link position in the world frame (m).
    xyz: tuple[float, float, float]
    # (4,) orientation quaternion (w, x, y, z).
    quat: tuple[float, float, float, float]
    # Opening fraction of the gripper (0 closed .. 1 open).
    gripper: float


def axis_angle_quat(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Return the unit quaternion (w, x, y, z) of a rotation by ``degrees`` about ``axis``."""
    axis = np.asarray(axis, np.float64)
    half = math.radians(degrees) / 2.0
    return np.concatenate([[math.cos(half)], math.sin(half) * axis / np.linalg.norm(axis)])


def quat_multiply(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Return the Hamilton product ``a * b`` of two quaternions (w, x, y, z)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw])


def _waypoint(step: int, xyz: Sequence[float], quat: Sequence[float],
              gripper: float) -> Waypoint:
    """Build a waypoint from arrays."""
    return Waypoint(step, tuple(float(v) for v in xyz), tuple(float(v) for v in quat),
                    float(gripper))


def transfer_cube_waypoints(cube_xyz: Sequence[float], left_start: Waypoint,
                            right_start: Waypoint, steps: int = EPISODE_STEPS
                            ) -> dict[str, list[Waypoint]]:
    """
    Plan both grippers' waypoints for passing the cube from the right arm to the left arm.

    Timing for a 400-step episode, scaled to ``steps``: the right gripper, pitched down 60
    degrees, descends onto the cube and closes (steps 0-170), carries it to the hand-over spot
    in the middle of the table (-210), sets it down (-240), lets go (-255) and backs away
    (-285); meanwhile the left gripper, pitched down likewise, waits beside the spot.
    :func:`left_pick_waypoints` plans the left gripper's pick once the cube lies there.

    Args:
        cube_xyz: (3,) cube position as sampled (m).
        left_start: The left gripper's pose at step 0.
        right_start: The right gripper's pose at step 0.
        steps: Episode length in control steps (>= 100).

    Returns:
        ``{'left': [...], 'right': [...]}``, waypoints in increasing step order.

    Raises:
        ValueError: ``steps`` < 100.

    """
    if steps < 100:
        raise ValueError(f'A transfer-cube episode needs >= 100 steps; got {steps}.')
    cube = np.asarray(cube_xyz, np.float64)
    spot = np.array([HANDOVER_XY[0], HANDOVER_XY[1], cube[2]])

    def at(step_of_400: int) -> int:
        return round(step_of_400 * steps / EPISODE_STEPS)

    right_pick = quat_multiply(right_start.quat, axis_angle_quat([0.0, 1.0, 0.0], -PITCH))
    left_pick = quat_multiply(left_start.quat, axis_angle_quat([0.0, 1.0, 0.0], PITCH))
    grasp = np.array([0.0, 0.0, PICK_DZ])
    left = [
        _waypoint(0, left_start.xyz, left_start.quat, CLOSED),
        _waypoint(at(150), spot + LEFT_WAIT, left_pick, OPEN),
        _waypoint(steps, spot + LEFT_WAIT, left_pick, OPEN),
    ]
    right = [
        _waypoint(0, right_start.xyz, right_start.quat, CLOSED),
        _waypoint(at(90), cube + ABOVE, right_pick, OPEN),  # above the cube
        _waypoint(at(130), cube + grasp, right_pick, OPEN),  # down around it
        _waypoint(at(170), cube + grasp, right_pick, CLOSED),  # grasp
        _waypoint(at(210), spot + grasp + ABOVE, right_pick, CLOSED),  # carry to the spot
        _waypoint(at(240), spot + grasp + SET_DOWN, right_pick, CLOSED),  # set it down
        _waypoint(at(255), spot + grasp + SET_DOWN, right_pick, OPEN),  # let go
        _waypoint(at(285), spot + RIGHT_AWAY, right_pick, OPEN),  # back away
        _waypoint(steps, spot + RIGHT_AWAY, right_pick, OPEN),
    ]
    return {'left': left, 'right': right}


def left_pick_waypoints(now: int, current: Waypoint, cube_xyz: Sequence[float],
                        steps: int = EPISODE_STEPS) -> list[Waypoint]:
    """
    Plan the left gripper's pick of the cube from step ``now`` on.

    It moves above the cube (-290 of 400), descends (-320), closes (-340) and lifts it (-370).

    Args:
        now: The current step (the right gripper has let go of the cube).
        current: The left gripper's current target pose.
        cube_xyz: (3,) where the cube lies now (m).
        steps: Episode length in control steps.

    Returns:
        The left gripper's waypoints from ``now`` to the end.

    """
    def at(step_of_400: int) -> int:
        return max(now, round(step_of_400 * steps / EPISODE_STEPS))

    # The waypoint offsets are for a cube at its sampled height; the cube lies lower.
    cube = np.asarray(cube_xyz, np.float64) + [0.0, 0.0, SAMPLED_CUBE_Z - CUBE_HALF_SIZE]
    grasp = cube + [0.0, 0.0, PICK_DZ]
    quat = current.quat
    return [
        _waypoint(now, current.xyz, quat, OPEN),
        _waypoint(at(290), cube + ABOVE, quat, OPEN),
        _waypoint(at(320), grasp, quat, OPEN),
        _waypoint(at(340), grasp, quat, CLOSED),
        _waypoint(at(370), grasp + LIFT, quat, CLOSED),
        _waypoint(steps, grasp + LIFT, quat, CLOSED),
    ]


def pose_at(waypoints: Sequence[Waypoint], step: float) -> tuple[np.ndarray, np.ndarray, float]:
    """
    Interpolate a gripper pose between waypoints.

    Position and opening are interpolated linearly; the orientation by normalised linear
    interpolation of the quaternions (on the shorter arc). Before the first waypoint the
    first pose holds, after the last one the last pose.

    Returns:
        (xyz (3,), quat (4,), gripper opening).

    """
    if step <= waypoints[0].step:
        w = waypoints[0]
        return np.array(w.xyz), np.array(w.quat), w.gripper
    for a, b in zip(waypoints, waypoints[1:]):
        if step <= b.step:
            f = (step - a.step) / max(b.step - a.step, 1)
            qa, qb = np.array(a.quat), np.array(b.quat)
            if np.dot(qa, qb) < 0.0:
                qb = -qb
            quat = (1 - f) * qa + f * qb
            xyz = (1 - f) * np.array(a.xyz) + f * np.array(b.xyz)
            return xyz, quat / np.linalg.norm(quat), (1 - f) * a.gripper + f * b.gripper
    w = waypoints[-1]
    return np.array(w.xyz), np.array(w.quat), w.gripper


@dataclass(frozen=True)
class ScriptedEpisode:
    """A planned demonstration: the joint trajectory to replay in the joint-space scene."""

    # Seed of the cube pose (gym_aloha.utils.sample_box_pose).
    seed: int
    # (7,) cube pose: position (m) and quaternion.
    cube_pose: np.ndarray
    # (T, 6) left and right arm joint targets (rad), one row per control step.
    left_arm: np.ndarray
    right_arm: np.ndarray
    # (T,) commanded gripper openings (0 closed .. 1 open).
    left_gripper: np.ndarray
    right_gripper: np.ndarray
    # Highest task reward reached in the end-effector scene (0..4).
    planned_reward: int

    @property
    def steps(self) -> int:
        """Return the number of control steps T."""
        return len(self.left_arm)

    def commands(self, gripper: GripperCalibration = INTERBOTIX_ROS2_GRIPPER) -> np.ndarray:
        """
        Return the (T, 14) commands in ALOHA robot order and units.

        Order: left waist..wrist_rotate, left gripper, right waist..wrist_rotate, right gripper;
        arm joints in rad, grippers as the gripper motor joint (rad) of ``gripper``.
        """
        to_joint = np.vectorize(gripper.fraction_to_joint, otypes=[np.float64])
        return np.concatenate([self.left_arm, to_joint(self.left_gripper)[:, None],
                               self.right_arm, to_joint(self.right_gripper)[:, None]], axis=1)


class EndEffectorScene:
    """gym-aloha's end-effector scene: grippers follow mocap bodies, fingers by position."""

    def __init__(self, control_period: float = 0.02) -> None:
        """Load the scene (MuJoCo through dm_control)."""
        select_headless_gl()
        from dm_control import mujoco
        from gym_aloha import constants
        self._constants = constants
        self._physics = mujoco.Physics.from_xml_path(
            str(constants.ASSETS_DIR / END_EFFECTOR_SCENE))
        model = self._physics.model
        self._substeps = max(1, int(round(control_period / model.opt.timestep)))
        # Finger actuators in ctrl: left arm (left, right finger), right arm (left, right).
        self._finger_low = float(model.actuator_ctrlrange[0, 0])
        self._finger_high = float(model.actuator_ctrlrange[0, 1])
        self._cube_qpos = int(model.jnt_qposadr[model.name2id(CUBE_JOINT, 'joint')])
        for index, side in enumerate(SIDES):
            for name in WRIST_ROLL_JOINTS:
                joint = model.name2id(SCENE_ARM_PREFIX.format(side=side) + name, 'joint')
                model.jnt_stiffness[joint] = WRIST_ROLL_STIFFNESS
                model.qpos_spring[model.jnt_qposadr[joint]] = constants.START_ARM_POSE[
                    index * ARM_QPOS + ARM_JOINT_NAMES.index(name)]

    def reset(self, cube_pose: np.ndarray) -> dict[str, Waypoint]:
        """
        Put the arms in the start pose, the cube at ``cube_pose`` and the mocaps on the grippers.

        Returns:
            The gripper pose of each side (step 0, gripper closed).

        """
        physics = self._physics
        start = np.asarray(self._constants.START_ARM_POSE, np.float64)
        with physics.reset_context():
            physics.data.qpos[:len(start)] = start
            physics.data.qpos[self._cube_qpos:self._cube_qpos + 7] = cube_pose
        poses = {}
        for index, side in enumerate(SIDES):
            # MuJoCo takes a weld's relative pose from the reference configuration (qpos0), with
            # the mocaps at the identity orientation: a mocap at the identity holds its gripper
            # in the zero-pose orientation, and each gripper link keeps a fixed offset from its
            # mocap (the grasp heights, PICK_DZ, include it). Waypoints are mocap poses.
            xyz = physics.named.data.xpos[GRIPPER_BODY.format(side=side)].copy()
            physics.data.mocap_pos[index] = xyz
            physics.data.mocap_quat[index] = MOCAP_START_QUAT
            poses[side] = _waypoint(0, xyz, MOCAP_START_QUAT, CLOSED)
        self._set_fingers(CLOSED, CLOSED)
        return poses

    def _set_fingers(self, left: float, right: float) -> None:
        """Command both grippers' fingers from opening fractions."""
        span = self._finger_high - self._finger_low
        fingers = [self._finger_low + f * span for f in (left, right)]
        self._physics.data.ctrl[:] = [fingers[0], -fingers[0], fingers[1], -fingers[1]]

    def step(self, targets: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> None:
        """Move the mocaps to ``targets[side] = (xyz, quat, opening)`` and advance one period."""
        for index, side in enumerate(SIDES):
            xyz, quat, _ = targets[side]
            self._physics.data.mocap_pos[index] = xyz
            self._physics.data.mocap_quat[index] = quat
        self._set_fingers(targets['left'][2], targets['right'][2])
        self._physics.step(self._substeps)

    def arm_joints(self, side: str) -> np.ndarray:
        """Return the (6,) joint angles of one arm (rad)."""
        start = SIDES.index(side) * ARM_QPOS
        return self._physics.data.qpos[start:start + ARM_DOF].copy()

    def cube_position(self) -> np.ndarray:
        """Return the (3,) position of the cube's centre (m)."""
        return self._physics.data.qpos[self._cube_qpos:self._cube_qpos + 3].copy()

    def reward(self) -> int:
        """Return the transfer-cube reward stage of the current contacts."""
        return task_reward(self._physics, 'transfer_cube')

    def close(self) -> None:
        """Free the scene."""
        self._physics.free()


def sample_cube_pose(seed: int) -> np.ndarray:
    """Return gym-aloha's randomised (7,) cube pose for ``seed``."""
    from gym_aloha.utils import sample_box_pose
    return np.asarray(sample_box_pose(seed), np.float64)


def plan_transfer_cube(seed: int, steps: int = EPISODE_STEPS,
                       scene: EndEffectorScene | None = None,
                       sim: AlohaSim | None = None) -> ScriptedEpisode:
    """
    Plan one demonstration for the cube pose of ``seed``.

    The end-effector scene turns the waypoints into joint angles. With ``sim`` (the joint-space
    sim) the plan is made in lockstep with it: every step's joint command is applied to ``sim``
    at once, and the left gripper aims at the cube where ``sim`` has it -- the arms there lag
    behind the end-effector scene, so the cube sits a little differently in the right gripper.
    A replay of the returned episode in a freshly reset sim then repeats that run exactly.

    Args:
        seed: Seed of the cube pose (the joint-space sim's ``reset(seed)`` uses the same).
        steps: Episode length in control steps.
        scene: A scene to reuse (loading one takes a while); a new one when None.
        sim: The joint-space sim to plan in lockstep with (reset here), or None to plan in the
            end-effector scene alone.

    Returns:
        The joint trajectory: row t is the joint pose the end-effector scene reached after
        t + 1 steps, with the commanded gripper openings; ``planned_reward`` is the highest
        reward of ``sim`` (or of the end-effector scene without one).

    """
    own = scene is None
    scene = scene or EndEffectorScene()
    try:
        cube = sample_cube_pose(seed)
        start = scene.reset(cube)
        if sim is not None:
            sim.reset(seed)
        plan = transfer_cube_waypoints(cube[:3], start['left'], start['right'], steps)
        arms = {side: [] for side in SIDES}
        grippers = {side: [] for side in SIDES}
        best = 0
        left_pick = round(LEFT_PICK_STEP * steps / EPISODE_STEPS)
        for t in range(steps):
            if t == left_pick:
                cube_now = scene.cube_position() if sim is None else sim.object_pose()[:3]
                current = _waypoint(t, *pose_at(plan['left'], t))
                plan['left'] = left_pick_waypoints(t, current, cube_now, steps)
            targets = {side: pose_at(plan[side], t) for side in SIDES}
            scene.step(targets)
            for side in SIDES:
                grippers[side].append(targets[side][2])
                arms[side].append(scene.arm_joints(side))
            if sim is None:
                best = max(best, scene.reward())
                continue
            for side in SIDES:
                sim.set_arm_target(side, arms[side][-1])
                sim.set_gripper_target(side, sim.config.gripper.fraction_to_joint(
                    targets[side][2]))
            sim.step()
            best = max(best, sim.reward())
    finally:
        if own:
            scene.close()
    return ScriptedEpisode(seed=seed, cube_pose=cube, left_arm=np.array(arms['left']),
                           right_arm=np.array(arms['right']),
                           left_gripper=np.array(grippers['left']),
                           right_gripper=np.array(grippers['right']), planned_reward=best)


# Called after each replayed step with (step index, the (14,) command just applied, reward).
StepCallback = Callable[[int, np.ndarray, int], None]


def replay(sim: AlohaSim, episode: ScriptedEpisode,
           on_step: StepCallback | None = None) -> list[int]:
    """
    Replay a planned episode in the joint-space sim, one command per control period.

    The sim is reset to the episode's cube pose first. ``on_step`` sees every command after
    the sim has stepped with it (observe the sim *before* applying a command by observing in
    the previous call, or before calling ``replay`` for the first).

    Returns:
        The task reward after each step, (T,) ints.

    """
    sim.reset(episode.seed)
    commands = episode.commands(sim.config.gripper)
    rewards = []
    for t, command in enumerate(commands):
        apply_command(sim, command)
        sim.step()
        rewards.append(sim.reward())
        if on_step is not None:
            on_step(t, command, rewards[-1])
    return rewards


def apply_command(sim: AlohaSim, command: np.ndarray) -> None:
    """Set the sim's targets from one (14,) command in ALOHA robot order and units."""
    for index, side in enumerate(SIDES):
        part = command[index * (ARM_DOF + 1):(index + 1) * (ARM_DOF + 1)]
        sim.set_arm_target(side, part[:ARM_DOF])
        sim.set_gripper_target(side, float(part[ARM_DOF]))


@dataclass(frozen=True)
class StageReport:
    """Success of a set of transfer-cube episodes by reward stage."""

    # Highest reward of every episode, in order (gym-aloha's measure: one step counts).
    max_rewards: tuple[int, ...]
    # Per episode: whether the final stage held for HOLD_STEPS consecutive steps (a stricter
    # measure: a cube knocked into the air can touch the left finger for a single step).
    held: tuple[bool, ...] = ()

    @classmethod
    def from_rewards(cls, rewards: Sequence[Sequence[int]]) -> StageReport:
        """Build the report from every episode's per-step rewards."""
        return cls(tuple(int(max(r, default=0)) for r in rewards),
                   tuple(held_success(r) for r in rewards))

    @property
    def held_rate(self) -> float:
        """Return the fraction of episodes whose success held (NaN when not recorded)."""
        if not self.held:
            return math.nan
        return sum(self.held) / len(self.held)

    @property
    def episodes(self) -> int:
        """Return the number of episodes."""
        return len(self.max_rewards)

    @property
    def success_rate(self) -> float:
        """Return the fraction of episodes that reached the final stage (NaN without any)."""
        return self.stage_rate(TRANSFER_CUBE_MAX_REWARD)

    def stage_rate(self, stage: int) -> float:
        """Return the fraction of episodes whose highest reward is >= ``stage``."""
        if not self.max_rewards:
            return math.nan
        return sum(r >= stage for r in self.max_rewards) / len(self.max_rewards)

    def as_dict(self) -> dict:
        """Return a JSON-serialisable summary (rates per stage name)."""
        return {
            'episodes': self.episodes,
            'success_rate': self.success_rate,
            'stages': {name: self.stage_rate(stage) for stage, name in STAGE_NAMES.items()},
            'max_rewards': list(self.max_rewards),
            'success_held_rate': self.held_rate,
            'success_held_steps': HOLD_STEPS,
        }

    def describe(self) -> str:
        """Return a one-line summary."""
        stages = ', '.join(f'{name} {self.stage_rate(stage):.0%}'
                           for stage, name in STAGE_NAMES.items())
        held = f', success held {HOLD_STEPS} steps: {self.held_rate:.0%}' if self.held else ''
        return (f'{self.episodes} episodes: success {self.success_rate:.0%} '
                f'(reached stage: {stages}{held})')


def held_success(rewards: Sequence[int], steps: int | None = None) -> bool:
    """Return whether the final stage was reached on ``steps`` consecutive steps."""
    steps = HOLD_STEPS if steps is None else steps
    run = 0
    for r in rewards:
        run = run + 1 if r >= TRANSFER_CUBE_MAX_REWARD else 0
        if run >= steps:
            return True
    return False


# Consecutive control steps (0.5 s) at the final stage that count as a held success.
HOLD_STEPS = 25
# gym-aloha's transfer-cube reward stages.
STAGE_NAMES = {1: 'touched', 2: 'lifted', 3: 'attempted_transfer', 4: 'success'}
