"""
Adapt two-arm robots (ALOHA / ViperX vx300s: 2 x (6 joints + gripper)).

With ``adapt_to_pi: true`` the adapter applies openpi's ALOHA conventions (pi0_model_spec.md 6.4),
which exist to match Physical Intelligence's internal Trossen runtime and are what the public ALOHA
checkpoints were trained with:

- joints: multiply by the flip mask ``[1, -1, -1, 1, 1, 1, 1] x 2`` (shoulder and elbow flipped);
- gripper state: the finger position is first normalised with the robot's own finger open/closed
  values (0 = closed, 1 = open, as the ALOHA runtime does), then mapped to openpi's finger range
  (0.01844, 0.05800) m, turned into a horn angle ``arcsin(clip((r^2 + p^2 - L^2) / (2 r p)))``
  (r = 0.022 m, L = 0.036 m) and normalised over (0.5476, 1.6296) rad;
- gripper action: ``g + 0.5476`` normalised over (-0.6213, 1.4910) gives the normalised gripper
  joint command (0 = closed, 1 = open), which the robot's own open/closed joint values turn into
  radians. On ROS 2 Interbotix ALOHA these differ from openpi's ROS 1 constants (finger 0.0440 /
  0.0579 m, joint 0.6197 / 1.6214 rad), which is why they live in the robot config.
"""

from typing import ClassVar

from embodiment_adapters import register_embodiment
from embodiment_adapters.common import EmbodimentAdapter
from embodiment_adapters.config import ActionMode, config_error, GripperSpec, RobotConfig
from embodiment_adapters.unified import GRIPPER_DIMS, LEFT_ARM, RIGHT_ARM
import numpy as np
from typing_extensions import override

# openpi's joint flip mask over unified dims 0-13 (left 6 + gripper, right 6 + gripper).
ALOHA_PI_JOINT_FLIP = (1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0) * 2
# openpi's (ROS 1 ALOHA) follower finger positions, metres: closed, open.
PI_FINGER_CLOSED = 0.01844
PI_FINGER_OPEN = 0.05800
# Gripper linkage of the ViperX gripper, metres: horn radius r and arm length L.
HORN_RADIUS = 0.022
ARM_LENGTH = 0.036
# Range of the horn angle that openpi normalises the state gripper over, radians.
PI_ANGLE_MIN = 0.5476
PI_ANGLE_MAX = 1.6296
# Offset openpi adds to the action gripper before normalising, radians.
PI_ACTION_OFFSET = 0.5476
# openpi's (ROS 1 ALOHA) follower gripper joint range, radians: closed, open.
PI_GRIPPER_JOINT_CLOSED = -0.6213
PI_GRIPPER_JOINT_OPEN = 1.4910


def pi_gripper_state_from_finger(n: np.ndarray) -> np.ndarray:
    """
    Convert a normalised finger position (0 = closed, 1 = open) to openpi's state gripper value.

    Args:
        n: normalised finger positions, any shape.

    Returns:
        Normalised horn angle, same shape (openpi's ``_gripper_to_angular``).

    """
    p = PI_FINGER_CLOSED + np.asarray(n, dtype=np.float64) * (PI_FINGER_OPEN - PI_FINGER_CLOSED)
    ratio = (HORN_RADIUS ** 2 + p ** 2 - ARM_LENGTH ** 2) / (2 * HORN_RADIUS * p)
    angle = np.arcsin(np.clip(ratio, -1.0, 1.0))
    return (angle - PI_ANGLE_MIN) / (PI_ANGLE_MAX - PI_ANGLE_MIN)


def pi_gripper_state_to_finger(g: np.ndarray) -> np.ndarray:
    """
    Invert `pi_gripper_state_from_finger` (exact where its clip did not engage).

    Solves ``p^2 - 2 r sin(a) p + (r^2 - L^2) = 0`` for the positive root (L > r).

    Args:
        g: openpi state gripper values, any shape.

    Returns:
        Normalised finger positions (0 = closed, 1 = open), same shape.

    """
    angle = PI_ANGLE_MIN + np.asarray(g, dtype=np.float64) * (PI_ANGLE_MAX - PI_ANGLE_MIN)
    rs = HORN_RADIUS * np.sin(angle)
    p = rs + np.sqrt(rs ** 2 - HORN_RADIUS ** 2 + ARM_LENGTH ** 2)
    return (p - PI_FINGER_CLOSED) / (PI_FINGER_OPEN - PI_FINGER_CLOSED)


def pi_gripper_action_to_joint(g: np.ndarray) -> np.ndarray:
    """
    Convert openpi's action gripper value to a normalised joint command (0 = closed, 1 = open).

    Args:
        g: model gripper actions, any shape.

    Returns:
        Normalised gripper joint commands, same shape (openpi's ``_gripper_from_angular``).

    """
    value = np.asarray(g, dtype=np.float64) + PI_ACTION_OFFSET
    return (value - PI_GRIPPER_JOINT_CLOSED) / (PI_GRIPPER_JOINT_OPEN - PI_GRIPPER_JOINT_CLOSED)


def pi_gripper_action_from_joint(n: np.ndarray) -> np.ndarray:
    """
    Invert `pi_gripper_action_to_joint`.

    Args:
        n: normalised gripper joint commands (0 = closed, 1 = open), any shape.

    Returns:
        openpi action gripper values, same shape.

    """
    value = PI_GRIPPER_JOINT_CLOSED + np.asarray(n, dtype=np.float64) * (
        PI_GRIPPER_JOINT_OPEN - PI_GRIPPER_JOINT_CLOSED)
    return value - PI_ACTION_OFFSET


def _to_closed_open_unit(x: np.ndarray, open_value: float, closed_value: float) -> np.ndarray:
    """Normalise robot values so that closed -> 0 and open -> 1 (the ALOHA runtime's scale)."""
    return (np.asarray(x, dtype=np.float64) - closed_value) / (open_value - closed_value)


def _from_closed_open_unit(n: np.ndarray, open_value: float, closed_value: float) -> np.ndarray:
    return closed_value + np.asarray(n, dtype=np.float64) * (open_value - closed_value)


@register_embodiment('bimanual')
class BimanualAdapter(EmbodimentAdapter):
    """
    Two arms with grippers; state and actions (14,) for ALOHA: [left 6, grip, right 6, grip].

    Inputs: joint states with per-arm prefixes ('left_waist', ..., 'left_left_finger'); cameras
    from the config (ALOHA: cam_high, cam_left_wrist, cam_right_wrist; cam_low unused).
    """

    EXAMPLE_PROMPT: ClassVar[str] = 'transfer the cube to the other arm'

    @classmethod
    @override
    def validate_config(cls, config: RobotConfig) -> None:
        """
        Require arm joints (not grippers) in both arm slot ranges and no base; check adapt_to_pi.

        Args:
            config: the robot config.

        Raises:
            ValueError: if the config does not describe a two-arm robot (or ALOHA's layout when
                adapt_to_pi is set).

        """
        slots = [j.slot for j in config.joints]
        arm_slots = [j.slot for j in config.joints if j.gripper is None]
        for arm, rng in (('left', LEFT_ARM), ('right', RIGHT_ARM)):
            if not any(rng.start <= s < rng.stop for s in arm_slots):
                raise config_error(config.source, 'joints', slots,
                                   f'joints in the {arm} arm slots {rng.start}-{rng.stop - 1}',
                                   'Use embodiment: single_arm for one arm.')
        if config.base:
            raise config_error(config.source, 'base', [b.name for b in config.base],
                               'no base dims for a bimanual robot',
                               'Use embodiment: mobile_manipulator.')
        if not config.adapt_to_pi:
            return
        expected = list(range(len(ALOHA_PI_JOINT_FLIP)))
        if sorted(slots) != expected:
            raise config_error(config.source, 'joints', slots, f'the ALOHA slots {expected} '
                               'with adapt_to_pi', 'Set adapt_to_pi: false for other layouts.')
        for i, j in enumerate(config.joints):
            if (j.gripper is not None) != (j.slot in GRIPPER_DIMS):
                raise config_error(config.source, f'joints[{i}].gripper', j.gripper,
                                   f'a gripper exactly at slots {list(GRIPPER_DIMS)}',
                                   'Move the gripper entries to slots 6 and 13.')
            if j.gripper is not None and j.action_mode == ActionMode.DELTA:
                raise config_error(config.source, f'joints[{i}].action', 'delta', "'absolute' "
                                   'for ALOHA grippers (state and action use different '
                                   'conventions)', 'Set action: absolute.')

    @override
    def joint_signs(self) -> np.ndarray:
        """Return openpi's flip mask per joint when adapt_to_pi is set, else all +1."""
        if not self.config.adapt_to_pi:
            return super().joint_signs()
        return np.array([ALOHA_PI_JOINT_FLIP[j.slot] for j in self.config.joints])

    @override
    def gripper_state_to_unified(self, spec: GripperSpec, x: np.ndarray) -> np.ndarray:
        """Convert the finger position (m) to the unified gripper state."""
        if not self.config.adapt_to_pi:
            return super().gripper_state_to_unified(spec, x)
        return pi_gripper_state_from_finger(
            _to_closed_open_unit(x, spec.state_open_value, spec.state_closed_value))

    @override
    def gripper_state_from_unified(self, spec: GripperSpec, u: np.ndarray) -> np.ndarray:
        """Invert `gripper_state_to_unified`."""
        if not self.config.adapt_to_pi:
            return super().gripper_state_from_unified(spec, u)
        return _from_closed_open_unit(pi_gripper_state_to_finger(u), spec.state_open_value,
                                      spec.state_closed_value)

    @override
    def gripper_action_from_unified(self, spec: GripperSpec, u: np.ndarray) -> np.ndarray:
        """Convert the unified gripper action to the gripper joint command (rad)."""
        if not self.config.adapt_to_pi:
            return super().gripper_action_from_unified(spec, u)
        return _from_closed_open_unit(pi_gripper_action_to_joint(u), spec.open_value,
                                      spec.closed_value)

    @override
    def gripper_action_to_unified(self, spec: GripperSpec, x: np.ndarray) -> np.ndarray:
        """Invert `gripper_action_from_unified`."""
        if not self.config.adapt_to_pi:
            return super().gripper_action_to_unified(spec, x)
        return pi_gripper_action_from_joint(
            _to_closed_open_unit(x, spec.open_value, spec.closed_value))
