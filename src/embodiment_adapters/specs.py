"""
Define the frozen dataclasses and enums that a robot config is made of.

`embodiment_adapters.config` builds them from YAML (and re-exports them); adapters and the ROS
layer read them. Units: radians or metres for joint positions, per second for velocities.
"""

from dataclasses import dataclass
import enum

from embodiment_adapters.unified import MODEL_IMAGE_KEYS

# Resolution hint used for camera images when a config gives none (rows, columns).
DEFAULT_IMAGE_HEIGHT = 480
DEFAULT_IMAGE_WIDTH = 640
# Unified gripper values of openpi / pi data for non-ALOHA robots: 0 = open, 1 = closed.
UNIFIED_GRIPPER_OPEN = 0.0
UNIFIED_GRIPPER_CLOSED = 1.0


class ActionMode(enum.StrEnum):
    """How the model's action for one joint relates to the robot command."""

    # The action is the target position itself.
    ABSOLUTE = 'absolute'
    # The action is a position offset from the current (unified) state.
    DELTA = 'delta'
    # The action is a joint VELOCITY (openpi's DROID checkpoints): the pipeline integrates it
    # into position targets at the chunk rate (control_rate_hz), starting from the measured
    # state the chunk was conditioned on; never sent as a position.
    VELOCITY = 'velocity'


class CommandType(enum.StrEnum):
    """ROS command interfaces a robot config may use."""

    # trajectory_msgs/JointTrajectory to a joint_trajectory_controller.
    JOINT_TRAJECTORY = 'joint_trajectory'
    # std_msgs/Float64MultiArray to a forward_command_controller (position interface).
    FORWARD_POSITION = 'forward_position'
    # geometry_msgs/Twist (e.g. a plain /cmd_vel).
    TWIST = 'twist'
    # geometry_msgs/TwistStamped (e.g. diff_drive_controller on Jazzy).
    TWIST_STAMPED = 'twist_stamped'


# Command types that carry base velocities; the others carry joint positions.
VELOCITY_COMMANDS = (CommandType.TWIST, CommandType.TWIST_STAMPED)


class BaseAxis(enum.StrEnum):
    """Meaning of one base velocity dim (units m/s for linear, rad/s for angular)."""

    LINEAR_X = 'linear_x'
    LINEAR_Y = 'linear_y'
    ANGULAR_Z = 'angular_z'


@dataclass(frozen=True)
class GripperSpec:
    """
    Gripper convention of one gripper joint.

    ``open_value``/``closed_value`` are the command joint's values (robot units) when fully
    open/closed; the state may come from another joint (ALOHA: finger position in metres) with
    its own values.
    """

    # Joint read for the gripper state (after the joint-state topic prefix).
    state_joint: str
    # State joint value when fully open / fully closed (robot units).
    state_open_value: float
    state_closed_value: float
    # Command joint value when fully open / fully closed (robot units).
    open_value: float
    closed_value: float


@dataclass(frozen=True)
class JointSpec:
    """One commanded joint (arm joint, gripper or torso) in robot order."""

    # Command joint name (after the joint-state topic prefix), e.g. 'left_waist'.
    name: str
    # Index in the unified vector (0..UNIFIED_DIM-1).
    slot: int
    # Position limits of the command (robot units: rad, m).
    lower: float
    upper: float
    # Largest speed the command may ask for (robot units per second).
    max_velocity: float
    # Whether the model's action for this joint is absolute or a delta from the state.
    action_mode: ActionMode
    # Gripper convention; None for an ordinary joint.
    gripper: GripperSpec | None = None
    # VELOCITY joints only: robot units per second per unit of the model's velocity action
    # (DROID: 0.2 rad per 1/15 s step for a normalised velocity of 1, i.e. 3.0 rad/s).
    velocity_scale: float = 1.0

    @property
    def state_name(self) -> str:
        """Return the joint whose position is the state of this dim."""
        return self.gripper.state_joint if self.gripper else self.name


@dataclass(frozen=True)
class BaseDimSpec:
    """One base velocity dim."""

    # Action name of the dim, e.g. 'base_vx'.
    name: str
    # Index in the unified vector (one of unified.BASE_DIMS).
    slot: int
    # Which Twist component this dim is.
    axis: BaseAxis
    # Symmetric velocity limit (m/s or rad/s).
    max_velocity: float
    # Largest change of the commanded velocity per second (m/s^2 or rad/s^2), speeding up and
    # slowing down alike (nav2 velocity_smoother / ros2_control limiter semantics); inf: none.
    max_acceleration: float = float('inf')


@dataclass(frozen=True)
class CameraSpec:
    """One camera: where it publishes and which model image slot it feeds."""

    # Camera name used as the key of observation images, e.g. 'cam_high'.
    name: str
    # Image topic (sensor_msgs/Image, or sensor_msgs/CompressedImage when compressed).
    topic: str
    # Whether the topic carries CompressedImage.
    compressed: bool
    # Index into unified.MODEL_IMAGE_KEYS, or None when the model does not use this camera.
    model_slot: int | None
    # Whether inference must wait for this camera (otherwise its slot is masked when missing).
    required: bool
    # Expected resolution (rows, columns); a hint for examples and tests.
    height: int = DEFAULT_IMAGE_HEIGHT
    width: int = DEFAULT_IMAGE_WIDTH

    @property
    def model_key(self) -> str | None:
        """Return the pi0 image key this camera feeds, or None."""
        return None if self.model_slot is None else MODEL_IMAGE_KEYS[self.model_slot]


@dataclass(frozen=True)
class JointStateTopic:
    """A sensor_msgs/JointState topic and the prefix added to the names it carries."""

    # Topic name, e.g. '/follower_left/joint_states'.
    topic: str
    # Prefix added to every incoming joint name ('' for none), e.g. 'left_'.
    prefix: str = ''


@dataclass(frozen=True)
class CommandSpec:
    """One command interface and the action dims it carries, in message order."""

    # One of CommandType.
    type: CommandType  # noqa: A003 (field name fixed by the architecture contract)
    # Topic the command is published on.
    topic: str
    # Action names (robot config names) carried, in message order.
    names: tuple[str, ...]
    # Names written into the message (JointTrajectory.joint_names); `names` minus strip_prefix.
    joint_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class RobotConfig:
    """A validated robot config; see config/robots/README.md for the YAML form."""

    # Robot name (file stem unless the file sets `name`).
    name: str
    # Registered embodiment family ('single_arm', 'bimanual', 'mobile_manipulator', 'mock').
    embodiment: str
    # File the config was read from ('<memory>' when built from a dict).
    source: str
    # Commanded joints (arm joints, grippers, torso) in robot order.
    joints: tuple[JointSpec, ...]
    # Base velocity dims in robot order (empty for fixed robots).
    base: tuple[BaseDimSpec, ...]
    # Whether the measured base velocity is part of the state (openpi's state excludes it).
    base_in_state: bool
    cameras: tuple[CameraSpec, ...]
    joint_state_topics: tuple[JointStateTopic, ...]
    commands: tuple[CommandSpec, ...]
    # Rate the policy's actions for this robot are spaced at (Hz): the rate of the data its
    # checkpoints were trained on; the chunk executors play chunks back at it
    # (ExecutionConfig.chunk_rate_hz), whatever the control timer's rate.
    control_rate_hz: float
    # Asset id of the checkpoint norm stats this robot matches (e.g. 'trossen'), or None.
    norm_stats_asset_id: str | None = None
    # ALOHA only: apply openpi's joint flips and gripper conversions (pi0_model_spec 6.4).
    adapt_to_pi: bool = False
    # Unified gripper values for fully open / closed (openpi data: 0 = open, 1 = closed).
    unified_gripper_open: float = UNIFIED_GRIPPER_OPEN
    unified_gripper_closed: float = UNIFIED_GRIPPER_CLOSED
    # Free text for people.
    description: str = ''
    # Joint positions to move to before a run (robot units, one per entry of `joints`, in that
    # order), e.g. openpi's ALOHA reset pose; None when the config gives none.
    start_pose: tuple[float, ...] | None = None
