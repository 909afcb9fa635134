"""
Simulated bimanual ALOHA: gym-aloha's MuJoCo scenes (two ViperX 300 S arms) under position control.

Pure Python (no rclpy). ``AlohaSim`` loads a gym-aloha scene through dm_control, holds one position
target per actuator, advances the physics by whole control periods and reports each arm in the
units of a real ROS 2 Interbotix ALOHA: the six arm joints in rad, the gripper motor joint in rad
and the two finger joints in m. The scene models the gripper as two slide joints (the fingers), so
the gripper is converted through its opening fraction (0 = closed, 1 = open):

    gripper joint (rad)  <->  opening fraction  <->  scene finger position (m)
                                                <->  real finger position (m, reported)

Axis letters: H = image height, W = image width.
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
import ctypes.util
from dataclasses import dataclass, field
import os
import time
from typing import Any, NamedTuple

import numpy as np

# The six arm joints of a ViperX 300 S, in the order of the real robot and the scene.
ARM_JOINT_NAMES: tuple[str, ...] = (
    'waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate')
GRIPPER_JOINT_NAME = 'gripper'
LEFT_FINGER_NAME = 'left_finger'
RIGHT_FINGER_NAME = 'right_finger'
# Joint names of one arm's JointState on a real Interbotix ALOHA (arm, gripper motor, fingers).
STATE_JOINT_NAMES: tuple[str, ...] = ARM_JOINT_NAMES + (
    GRIPPER_JOINT_NAME, LEFT_FINGER_NAME, RIGHT_FINGER_NAME)
ARM_DOF = len(ARM_JOINT_NAMES)
SIDES: tuple[str, ...] = ('left', 'right')
# Scene joint names are '<arm prefix><joint>', e.g. 'vx300s_left/waist'.
SCENE_ARM_PREFIX = 'vx300s_{side}/'
# Scene cameras (gym-aloha): a fixed top view and one camera on each wrist, plus extra views.
TOP_CAMERA = 'top'
LEFT_WRIST_CAMERA = 'left_wrist'
RIGHT_WRIST_CAMERA = 'right_wrist'
# Scene files and object samplers of the gym-aloha tasks; the objects' free joints follow the arms
# in qpos.
TASK_SCENES: dict[str, str] = {
    'transfer_cube': 'bimanual_viperx_transfer_cube.xml',
    'insertion': 'bimanual_viperx_insertion.xml',
}
# OpenGL back ends MuJoCo can render with headless, in order of preference, and their libraries.
HEADLESS_GL_LIBRARIES: tuple[tuple[str, str], ...] = (('egl', 'EGL'), ('osmesa', 'OSMesa'))
MUJOCO_GL_VARIABLE = 'MUJOCO_GL'
# Wall seconds that measure_cost() spends stepping and rendering (after one warm-up frame).
CALIBRATION_SECONDS = 1.0


@dataclass(frozen=True)
class GripperCalibration:
    """Open and closed positions of one follower gripper of a real ALOHA."""

    # Gripper motor joint (rad), the unit the gripper controller is commanded in.
    joint_open: float = 1.6214
    joint_closed: float = 0.6197
    # Left finger slide joint (m) as reported in JointState; the right finger is its negative.
    finger_open: float = 0.0579
    finger_closed: float = 0.0440

    def __post_init__(self) -> None:
        """Reject a calibration whose open and closed values coincide."""
        if self.joint_open == self.joint_closed or self.finger_open == self.finger_closed:
            raise ValueError(
                f'Gripper calibration needs distinct open and closed values; got joint '
                f'{self.joint_open}/{self.joint_closed} and finger {self.finger_open}/'
                f'{self.finger_closed}. Use the values of the follower arms in aloha.yaml.')

    def joint_to_fraction(self, joint: float) -> float:
        """Return the opening fraction (0 closed .. 1 open, clipped) of a gripper joint angle."""
        fraction = (joint - self.joint_closed) / (self.joint_open - self.joint_closed)
        return float(np.clip(fraction, 0.0, 1.0))

    def fraction_to_joint(self, fraction: float) -> float:
        """Return the gripper joint angle (rad) of an opening fraction."""
        return self.joint_closed + fraction * (self.joint_open - self.joint_closed)

    def fraction_to_finger(self, fraction: float) -> float:
        """Return the left finger position (m) of an opening fraction."""
        return self.finger_closed + fraction * (self.finger_open - self.finger_closed)


# ROS 2 Interbotix ALOHA followers (Interbotix/aloha robot_utils constants).
INTERBOTIX_ROS2_GRIPPER = GripperCalibration()


@dataclass(frozen=True)
class AlohaSimConfig:
    """Configuration of the simulated ALOHA."""

    # gym-aloha task whose scene is loaded, one of TASK_SCENES.
    task: str = 'transfer_cube'
    # Seconds of simulated time per step() (the control period; gym-aloha uses 0.02 = 50 Hz).
    control_period: float = 0.02
    # Size of rendered camera images in pixels (the real cameras are 480 x 640; the model
    # resizes to 224 anyway, and rendering on a CPU costs time in proportion to the pixels).
    image_height: int = 240
    image_width: int = 320
    # Render with shadows and multisampling (slower on a CPU renderer; shadows show artefacts).
    high_quality_render: bool = False
    # Seed of the object pose sampled at reset() (None: a random pose).
    seed: int | None = 0
    # Gripper units of the real robot that the sim reports and accepts.
    gripper: GripperCalibration = field(default_factory=GripperCalibration)

    def __post_init__(self) -> None:
        """Validate the fields."""
        if self.task not in TASK_SCENES:
            raise ValueError(f'Unknown ALOHA sim task {self.task!r}; expected one of '
                             f'{sorted(TASK_SCENES)}.')
        if not self.control_period > 0.0:
            raise ValueError(f'control_period ({self.control_period}) must be > 0 seconds.')
        if self.image_height <= 0 or self.image_width <= 0:
            raise ValueError(f'Image size {self.image_height} x {self.image_width} must be '
                             'positive.')


# gym-aloha's reward stages of the tasks: 0 nothing, up to 4 = task solved.
TRANSFER_CUBE_MAX_REWARD = 4
# Contact geoms of the transfer-cube reward.
CUBE_GEOM = 'red_box'
TABLE_GEOM = 'table'
LEFT_GRIPPER_FINGER_GEOM = 'vx300s_left/10_left_gripper_finger'
RIGHT_GRIPPER_FINGER_GEOM = 'vx300s_right/10_right_gripper_finger'


def contact_pairs(physics: Any) -> set[tuple[str, str]]:
    """Return the (geom, geom) name pairs in contact in a dm_control physics, both orders."""
    model, data = physics.model, physics.data
    pairs = set()
    for k in range(data.ncon):
        a = model.id2name(data.contact[k].geom1, 'geom')
        b = model.id2name(data.contact[k].geom2, 'geom')
        pairs |= {(a, b), (b, a)}
    return pairs


def transfer_cube_stage(pairs: set[tuple[str, str]]) -> int:
    """
    Return gym-aloha's transfer-cube reward stage of a set of contacts.

    1: the right gripper touches the cube; 2: and the cube is off the table (lifted); 3: the
    left gripper touches the cube (transfer attempted); 4: and the cube is off the table.
    """
    right = (CUBE_GEOM, RIGHT_GRIPPER_FINGER_GEOM) in pairs
    left = (CUBE_GEOM, LEFT_GRIPPER_FINGER_GEOM) in pairs
    table = (CUBE_GEOM, TABLE_GEOM) in pairs
    if left:
        return 3 if table else 4
    if right:
        return 1 if table else 2
    return 0


def task_reward(physics: Any, task: str) -> int:
    """
    Return the reward stage of ``task`` in a scene's current state.

    Raises:
        ValueError: No reward is defined for ``task`` here (only 'transfer_cube').

    """
    if task != 'transfer_cube':
        raise ValueError(f'No reward for ALOHA sim task {task!r}; rewards exist for '
                         "['transfer_cube'].")
    return transfer_cube_stage(contact_pairs(physics))


class TrajectoryTarget:
    """
    Position targets that follow a joint trajectory in time, like a joint_trajectory_controller.

    A new trajectory replaces the old one. Before its first point the target moves linearly from
    the target held when it arrived; between points it is interpolated linearly; after the last
    point the last point is held (also when commands stop).
    """

    def __init__(self, initial: np.ndarray) -> None:
        """Hold ``initial`` ((N,) positions) until the first trajectory arrives."""
        initial = np.asarray(initial, np.float64)
        self._knots = np.zeros(1)  # (K,) absolute times in s
        self._values = initial[None, :].copy()  # (K, N)

    @property
    def dof(self) -> int:
        """Return the number of positions N."""
        return self._values.shape[1]

    def replace(self, start: float, times: np.ndarray, positions: np.ndarray, *,
                now: float) -> None:
        """
        Replace the trajectory.

        Args:
            start: Absolute time (s) the trajectory's times count from.
            times: (P,) non-decreasing times of the points after ``start`` (s, >= 0).
            positions: (P, N) positions of the points.
            now: Current absolute time (s); the held target at ``now`` starts the trajectory.

        Raises:
            ValueError: Shapes disagree, there are no points, times decrease or are negative,
                or a value is not finite.

        """
        times = np.asarray(times, np.float64)
        positions = np.asarray(positions, np.float64)
        if times.ndim != 1 or len(times) == 0 or positions.shape != (len(times), self.dof):
            raise ValueError(f'A trajectory needs P >= 1 times and (P, {self.dof}) positions; got '
                             f'times {times.shape} and positions {positions.shape}.')
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(positions))):
            raise ValueError('Trajectory times and positions must be finite; got '
                             f'times {times.tolist()} and positions {positions.tolist()}.')
        if np.any(times < 0.0) or np.any(np.diff(times) < 0.0):
            raise ValueError(f'Trajectory times {times.tolist()} must be >= 0 and '
                             'non-decreasing.')
        held = self.sample(now)
        knots = start + times
        keep = knots > now  # points already due replace the held target at once
        if not np.any(keep):
            self._knots, self._values = np.array([now]), positions[-1:].copy()
            return
        first = int(np.argmax(keep))
        anchor = positions[first - 1] if first > 0 else held
        self._knots = np.concatenate([[now], knots[first:]])
        self._values = np.concatenate([anchor[None, :], positions[first:]])

    def sample(self, now: float) -> np.ndarray:
        """Return the (N,) target at absolute time ``now`` (s)."""
        return np.array([np.interp(now, self._knots, self._values[:, j])
                         for j in range(self.dof)])


class ArmState(NamedTuple):
    """State of one arm in the units of a real ALOHA, in ``STATE_JOINT_NAMES`` order."""

    # Joint names (STATE_JOINT_NAMES).
    names: tuple[str, ...]
    # (9,) positions: rad for the arm and gripper joints, m for the fingers.
    positions: np.ndarray
    # (9,) velocities: rad/s and m/s.
    velocities: np.ndarray


def select_headless_gl(environ: dict[str, str] | None = None,
                       find_library: Callable[[str], str | None] = ctypes.util.find_library
                       ) -> str:
    """
    Choose MuJoCo's headless OpenGL back end and set ``MUJOCO_GL`` when it is unset.

    Args:
        environ: Environment to read and update (``os.environ`` when None).
        find_library: Library lookup (``ctypes.util.find_library``).

    Returns:
        The back end in use: the existing ``MUJOCO_GL``, else ``egl`` or ``osmesa``, whichever
        library is found first.

    Raises:
        RuntimeError: ``MUJOCO_GL`` is unset and neither libEGL nor libOSMesa is installed.

    """
    environ = os.environ if environ is None else environ
    if environ.get(MUJOCO_GL_VARIABLE):
        return environ[MUJOCO_GL_VARIABLE]
    for backend, library in HEADLESS_GL_LIBRARIES:
        if find_library(library):
            environ[MUJOCO_GL_VARIABLE] = backend
            return backend
    raise RuntimeError(
        'MuJoCo needs libEGL or libOSMesa to render without a display, and neither was found. '
        "Install one (e.g. 'sudo apt-get install libegl1' or 'libosmesa6') or set MUJOCO_GL.")


class SimulationDiverged(RuntimeError):
    """The physics became invalid (e.g. wild commands); ``AlohaSim.reset`` starts over."""


class AlohaSim:
    """
    Two simulated ViperX arms under position control, stepped one control period at a time.

    Inputs: per arm a (6,) arm target in rad and a gripper joint target in rad (real-robot units);
    targets are clipped to the actuator ranges and held until replaced. Outputs: ``ArmState`` per
    arm and (H, W, 3) uint8 camera images.
    """

    def __init__(self, config: AlohaSimConfig | None = None) -> None:
        """Load the scene of ``config.task`` and reset it."""
        self._config = config or AlohaSimConfig()
        select_headless_gl()
        # Imported here so that importing this module neither needs MuJoCo nor fixes MUJOCO_GL.
        from dm_control import mujoco
        from dm_control.mujoco.wrapper.mjbindings import enums
        from dm_control.rl.control import PhysicsError
        from gym_aloha import constants
        self._physics_error = PhysicsError
        self._start_pose = np.asarray(constants.START_ARM_POSE, np.float64)  # (16,)
        self._physics = mujoco.Physics.from_xml_path(
            str(constants.ASSETS_DIR / TASK_SCENES[self._config.task]))
        model = self._physics.model
        if not self._config.high_quality_render:
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        ratio = self._config.control_period / model.opt.timestep
        self._substeps = max(1, int(round(ratio)))
        self._joint_qpos: dict[str, int] = {}
        self._joint_dof: dict[str, int] = {}
        self._actuator: dict[str, int] = {}
        joint_of_actuator = {int(model.actuator_trnid[a, 0]): a for a in range(model.nu)}
        for side in SIDES:
            for name in ARM_JOINT_NAMES + (LEFT_FINGER_NAME, RIGHT_FINGER_NAME):
                scene_name = SCENE_ARM_PREFIX.format(side=side) + name
                joint = model.name2id(scene_name, 'joint')
                self._joint_qpos[scene_name] = int(model.jnt_qposadr[joint])
                self._joint_dof[scene_name] = int(model.jnt_dofadr[joint])
                self._actuator[scene_name] = joint_of_actuator[joint]
        self._ctrl_low = model.actuator_ctrlrange[:, 0].copy()  # (nu,)
        self._ctrl_high = model.actuator_ctrlrange[:, 1].copy()  # (nu,)
        self._cameras = tuple(model.id2name(i, 'camera') for i in range(model.ncam))
        # Geoms of the task objects: the bodies on a free joint (object_mask).
        free = {int(model.jnt_bodyid[j]) for j in range(model.njnt)
                if model.jnt_type[j] == enums.mjtJoint.mjJNT_FREE}
        self._object_geoms = np.array([g for g in range(model.ngeom)
                                       if int(model.geom_bodyid[g]) in free])
        # An OpenGL context is current on one thread only, and callers (executor threads) vary:
        # every render runs on this one thread.
        self._renderer: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='aloha_sim_render')
        self.reset()

    @property
    def config(self) -> AlohaSimConfig:
        """Return the configuration."""
        return self._config

    @property
    def cameras(self) -> tuple[str, ...]:
        """Return the names of the scene's cameras."""
        return self._cameras

    @property
    def time(self) -> float:
        """Return the simulated time in seconds since the last reset."""
        return float(self._physics.data.time)

    def reset(self, seed: int | None = None) -> None:
        """
        Put both arms in the gym-aloha start pose and sample the task objects' pose.

        Args:
            seed: Seed of the object pose (``config.seed`` when None).

        """
        from gym_aloha.utils import sample_box_pose, sample_insertion_pose
        seed = self._config.seed if seed is None else seed
        if self._config.task == 'transfer_cube':
            objects = sample_box_pose(seed)
        else:
            objects = np.concatenate(sample_insertion_pose(seed))
        physics = self._physics
        with physics.reset_context():
            physics.data.qpos[:len(self._start_pose)] = self._start_pose
            physics.data.qpos[len(self._start_pose):] = objects
            physics.data.ctrl[:] = self._start_pose

    def _scene(self, side: str, name: str) -> str:
        """Return the scene name of joint ``name`` of arm ``side``."""
        if side not in SIDES:
            raise ValueError(f'Unknown arm side {side!r}; expected one of {list(SIDES)}.')
        return SCENE_ARM_PREFIX.format(side=side) + name

    def _set_ctrl(self, scene_name: str, value: float) -> None:
        """Set one actuator target, clipped to its control range."""
        actuator = self._actuator[scene_name]
        self._physics.data.ctrl[actuator] = np.clip(
            value, self._ctrl_low[actuator], self._ctrl_high[actuator])

    def set_arm_target(self, side: str, positions: np.ndarray) -> None:
        """
        Set the position targets of the six joints of one arm.

        Args:
            side: 'left' or 'right'.
            positions: (6,) joint angles in rad, ``ARM_JOINT_NAMES`` order.

        Raises:
            ValueError: Unknown side, wrong shape or a non-finite value.

        """
        positions = np.asarray(positions, np.float64)
        if positions.shape != (ARM_DOF,) or not np.all(np.isfinite(positions)):
            raise ValueError(f'Arm target for {side!r} must be {ARM_DOF} finite joint angles in '
                             f'{list(ARM_JOINT_NAMES)} order; got {positions.tolist()}.')
        for name, value in zip(ARM_JOINT_NAMES, positions):
            self._set_ctrl(self._scene(side, name), float(value))

    def set_gripper_target(self, side: str, joint: float) -> None:
        """
        Set the gripper target of one arm from a gripper motor joint angle.

        Args:
            side: 'left' or 'right'.
            joint: Gripper joint angle in rad (``config.gripper`` open/closed; clipped to them).

        Raises:
            ValueError: Unknown side or a non-finite value.

        """
        if not np.isfinite(joint):
            raise ValueError(f'Gripper target for {side!r} must be finite; got {joint}.')
        fraction = self._config.gripper.joint_to_fraction(float(joint))
        left = self._scene(side, LEFT_FINGER_NAME)
        actuator = self._actuator[left]
        # The scene fingers close at the low end of the left finger's range.
        finger = self._ctrl_low[actuator] + fraction * (
            self._ctrl_high[actuator] - self._ctrl_low[actuator])
        self._set_ctrl(left, finger)
        self._set_ctrl(self._scene(side, RIGHT_FINGER_NAME), -finger)

    def set_joint_target(self, side: str, joint: str, value: float) -> None:
        """
        Set the target of one joint by its real-robot name.

        Args:
            side: 'left' or 'right'.
            joint: One of ``ARM_JOINT_NAMES`` (rad) or ``GRIPPER_JOINT_NAME`` (gripper joint, rad).
            value: Target in rad.

        Raises:
            ValueError: Unknown side or joint, or a non-finite value.

        """
        if joint == GRIPPER_JOINT_NAME:
            self.set_gripper_target(side, value)
            return
        if joint not in ARM_JOINT_NAMES:
            raise ValueError(f'Joint {joint!r} cannot be commanded in the ALOHA sim; expected one '
                             f'of {list(ARM_JOINT_NAMES) + [GRIPPER_JOINT_NAME]}.')
        if not np.isfinite(value):
            raise ValueError(f'Target of {side} {joint} must be finite; got {value}.')
        self._set_ctrl(self._scene(side, joint), float(value))

    def joint_target(self, side: str, joint: str) -> float:
        """Return the held target (rad) of one joint named as in ``set_joint_target``."""
        if joint == GRIPPER_JOINT_NAME:
            return self.gripper_target(side)
        if joint not in ARM_JOINT_NAMES:
            raise ValueError(f'Joint {joint!r} is not commanded in the ALOHA sim; expected one '
                             f'of {list(ARM_JOINT_NAMES) + [GRIPPER_JOINT_NAME]}.')
        return float(self._physics.data.ctrl[self._actuator[self._scene(side, joint)]])

    def arm_target(self, side: str) -> np.ndarray:
        """Return the (6,) held arm target of ``side`` in rad."""
        return np.array([self._physics.data.ctrl[self._actuator[self._scene(side, name)]]
                         for name in ARM_JOINT_NAMES])

    def gripper_target(self, side: str) -> float:
        """Return the held gripper target of ``side`` as a gripper joint angle in rad."""
        actuator = self._actuator[self._scene(side, LEFT_FINGER_NAME)]
        return self._config.gripper.fraction_to_joint(self._finger_fraction(
            actuator, self._physics.data.ctrl[actuator]))

    def _finger_fraction(self, actuator: int, finger: float) -> float:
        """Return the opening fraction of a scene left-finger position."""
        low, high = self._ctrl_low[actuator], self._ctrl_high[actuator]
        return float(np.clip((finger - low) / (high - low), 0.0, 1.0))

    def object_pose(self) -> np.ndarray:
        """Return the task objects' poses (transfer_cube: the cube's (7,) position + quat)."""
        return self._physics.data.qpos[len(self._start_pose):].copy()

    def reward(self) -> int:
        """Return gym-aloha's reward stage of the task in the current state (0..4)."""
        return task_reward(self._physics, self._config.task)

    def step(self, periods: int = 1) -> None:
        """
        Advance the physics by whole control periods, holding the current targets.

        Args:
            periods: Number of control periods (>= 1).

        Raises:
            ValueError: ``periods`` < 1.
            SimulationDiverged: MuJoCo found the state invalid (non-finite or runaway
                accelerations); the scene must be ``reset`` before it steps again.

        """
        if periods < 1:
            raise ValueError(f'step() needs periods >= 1; got {periods}.')
        try:
            self._physics.step(self._substeps * periods)
        except self._physics_error as error:
            raise SimulationDiverged(
                f'The ALOHA physics diverged at t={self.time:.3f} s ({error}): the commanded '
                'targets drove the arms into an unstable state. reset() starts a new '
                'episode.') from error

    def joint_state(self, side: str) -> ArmState:
        """
        Return the state of one arm as a real ALOHA reports it.

        Args:
            side: 'left' or 'right'.

        Returns:
            ``ArmState`` with ``STATE_JOINT_NAMES``: arm joints (rad), gripper joint (rad),
            left finger (m, real-robot range) and right finger (its negative).

        """
        data = self._physics.data
        arm_names = [self._scene(side, name) for name in ARM_JOINT_NAMES]
        arm_q = np.array([data.qpos[self._joint_qpos[n]] for n in arm_names])  # (6,)
        arm_v = np.array([data.qvel[self._joint_dof[n]] for n in arm_names])  # (6,)
        left = self._scene(side, LEFT_FINGER_NAME)
        actuator = self._actuator[left]
        fraction = self._finger_fraction(actuator, data.qpos[self._joint_qpos[left]])
        span = self._ctrl_high[actuator] - self._ctrl_low[actuator]
        fraction_rate = data.qvel[self._joint_dof[left]] / span  # 1/s
        grip = self._config.gripper
        gripper_q = grip.fraction_to_joint(fraction)
        finger_q = grip.fraction_to_finger(fraction)
        gripper_v = fraction_rate * (grip.joint_open - grip.joint_closed)
        finger_v = fraction_rate * (grip.finger_open - grip.finger_closed)
        positions = np.concatenate([arm_q, [gripper_q, finger_q, -finger_q]])  # (9,)
        velocities = np.concatenate([arm_v, [gripper_v, finger_v, -finger_v]])  # (9,)
        return ArmState(STATE_JOINT_NAMES, positions, velocities)

    def render(self, camera: str) -> np.ndarray:
        """
        Render one scene camera at the configured size.

        Args:
            camera: A name in ``cameras`` (e.g. ``TOP_CAMERA``).

        Returns:
            (H, W, 3) uint8 RGB image.

        Raises:
            ValueError: The camera is not in the scene.

        """
        return self._render(camera)

    def _render(self, camera: str, **options: bool) -> np.ndarray:
        """Render ``camera`` on the render thread with MuJoCo's render ``options``."""
        if camera not in self._cameras:
            raise ValueError(f'Camera {camera!r} is not in the ALOHA scene; expected one of '
                             f'{list(self._cameras)}.')
        if self._renderer is None:
            raise RuntimeError('Rendering after close(); create a new AlohaSim.')
        return self._renderer.submit(
            self._physics.render, height=self._config.image_height,
            width=self._config.image_width, camera_id=camera, **options).result()

    def object_mask(self, camera: str) -> np.ndarray:
        """
        Render which pixels of one camera show the task objects (the free-floating bodies).

        MuJoCo's segmentation render, at the configured size: exact for the rendered image and
        independent of colour, so it can label camera frames (e.g. to pretrain a vision tower).

        Args:
            camera: A name in ``cameras``.

        Returns:
            (H, W) bool, True where an object's geom is the nearest surface.

        Raises:
            ValueError: The camera is not in the scene.

        """
        from dm_control.mujoco.wrapper.mjbindings import enums
        segmentation = self._render(camera, segmentation=True)  # (H, W, 2): id, type
        ids, types = segmentation[..., 0], segmentation[..., 1]
        return (types == enums.mjtObj.mjOBJ_GEOM) & np.isin(ids, self._object_geoms)

    def close(self) -> None:
        """
        Free the scene and its OpenGL context and join the render thread (idempotent).

        The simulation must not be used afterwards.
        """
        if self._renderer is None:
            return
        self._renderer.submit(self._physics.free).result()
        self._renderer.shutdown(wait=True)
        self._renderer = None


def steps_per_frame(control_period: float, camera_rate_hz: float) -> int:
    """
    Return the control periods between two camera frames (at least 1).

    Raises:
        ValueError: A period or rate is not positive.

    """
    if not (control_period > 0.0 and camera_rate_hz > 0.0):
        raise ValueError(f'control_period ({control_period} s) and camera_rate_hz '
                         f'({camera_rate_hz} Hz) must both be > 0.')
    return max(1, round(1.0 / (camera_rate_hz * control_period)))


@dataclass(frozen=True)
class SimCost:
    """Wall-clock cost of simulating one control period on this machine, as measured."""

    # Simulated seconds per control period.
    period: float
    # Mean wall seconds of stepping the physics by one control period.
    step_s: float
    # Mean wall seconds of one camera frame: every published camera rendered (and encoded) once.
    frame_s: float
    # Control periods per camera frame (see steps_per_frame).
    steps_per_frame: int

    @property
    def per_period_s(self) -> float:
        """Return the wall seconds per control period: a step plus the amortised frame."""
        return self.step_s + self.frame_s / self.steps_per_frame

    @property
    def load(self) -> float:
        """Return the fraction of real time the sim needs (1.0: exactly real time)."""
        return self.per_period_s / self.period


def measure_cost(sim: AlohaSim, cameras: Sequence[str], frame_steps: int, *,
                 seconds: float = CALIBRATION_SECONDS,
                 encode: Callable[[np.ndarray], Any] | None = None) -> SimCost:
    """
    Measure what one control period costs: step ``frame_steps`` periods, render, repeat.

    The pattern is the sim node's: a frame of every camera after each ``frame_steps`` steps. One
    warm-up frame (the OpenGL context is created on first use) is not counted; then the loop runs
    for about ``seconds`` of wall time, at least one round. The simulation's state moves on (call
    ``reset()`` afterwards to start over).

    Args:
        sim: The simulation, configured as it will run (image size, render quality, period).
        cameras: Scene cameras rendered each frame (may be empty).
        frame_steps: Control periods per camera frame (>= 1).
        seconds: Wall seconds to measure for (> 0).
        encode: Applied to every rendered (H, W, 3) image, e.g. the ROS message conversion.

    Returns:
        The mean costs.

    Raises:
        ValueError: ``frame_steps`` < 1 or ``seconds`` <= 0.

    """
    if frame_steps < 1 or not seconds > 0.0:
        raise ValueError(f'measure_cost() needs frame_steps >= 1 and seconds > 0; got '
                         f'{frame_steps} and {seconds}.')
    encode = encode or (lambda image: image)
    for camera in cameras:
        encode(sim.render(camera))
    step_s = frame_s = 0.0
    rounds = 0
    deadline = time.perf_counter() + seconds
    while rounds == 0 or time.perf_counter() < deadline:
        start = time.perf_counter()
        sim.step(frame_steps)
        rendered = time.perf_counter()
        for camera in cameras:
            encode(sim.render(camera))
        step_s += rendered - start
        frame_s += time.perf_counter() - rendered
        rounds += 1
    return SimCost(period=sim.config.control_period, step_s=step_s / (rounds * frame_steps),
                   frame_s=frame_s / rounds if cameras else 0.0,
                   steps_per_frame=frame_steps)
