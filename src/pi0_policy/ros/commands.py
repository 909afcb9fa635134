"""
Route one safe command vector to the robot's command interfaces (one message per interface).

Pure (no Node): the robot config lists ``CommandSpec(type, topic, names)``; ``CommandRouter``
precomputes which action dims each interface carries and builds JointTrajectory,
Float64MultiArray, Twist or TwistStamped messages from a (D,) command in ``action_names`` order.
"""

from collections.abc import Sequence
from typing import Any

from builtin_interfaces.msg import Time
from embodiment_adapters.config import BaseDimSpec, CommandSpec, CommandType
from geometry_msgs.msg import Twist, TwistStamped
import numpy as np
from pi0_policy.ros import conversions
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

MESSAGE_TYPES: dict[CommandType, type] = {
    CommandType.JOINT_TRAJECTORY: JointTrajectory,
    CommandType.FORWARD_POSITION: Float64MultiArray,
    CommandType.TWIST: Twist,
    CommandType.TWIST_STAMPED: TwistStamped,
}
_VELOCITY = (CommandType.TWIST, CommandType.TWIST_STAMPED)


class CommandRouter:
    """Split a (D,) command into the messages of the robot's command interfaces."""

    def __init__(self, commands: Sequence[CommandSpec], action_names: Sequence[str],
                 base: Sequence[BaseDimSpec], *, control_period: float,
                 base_frame_id: str) -> None:
        """
        Precompute the dims of each interface.

        Args:
            commands: The robot config's command specs.
            action_names: The adapter's action names (D of them, joints then base dims).
            base: The robot config's base dims (their axes drive Twist fields).
            control_period: Seconds; JointTrajectory points are due one period ahead.
            base_frame_id: frame_id of TwistStamped commands.

        Raises:
            ValueError: A command names a dim that is not an action name.

        """
        position = {name: i for i, name in enumerate(action_names)}
        axes = {dim.name: dim.axis.value for dim in base}
        self._specs = tuple(commands)
        self._indices = []
        for spec in self._specs:
            missing = [name for name in spec.names if name not in position]
            if missing:
                raise ValueError(f'Command {spec.topic!r} names {missing}, which are not action '
                                 f'dims {list(action_names)}; fix the robot config.')
            self._indices.append(np.array([position[name] for name in spec.names]))
        self._axes = tuple(tuple(axes.get(name, '') for name in spec.names)
                           for spec in self._specs)
        self._period = control_period
        # frame_id of TwistStamped commands (may change while running).
        self.frame_id = base_frame_id

    @property
    def specs(self) -> tuple[CommandSpec, ...]:
        """Return the command specs in publishing order."""
        return self._specs

    @property
    def message_types(self) -> tuple[type, ...]:
        """Return the message type of each command spec."""
        return tuple(MESSAGE_TYPES[spec.type] for spec in self._specs)

    def messages(self, command: np.ndarray | None, stamp: Time) -> list[Any | None]:
        """
        Build one message per command spec.

        Args:
            command: (D,) safe command in action_names order, or None when no position is known
                (then position interfaces get None, i.e. publish nothing, and bases a zero twist).
            stamp: Stamp of TwistStamped messages (JointTrajectory keeps 0 = start now).

        Returns:
            A message (or None) per spec, in ``specs`` order.

        """
        out: list[Any | None] = []
        for spec, index, axes in zip(self._specs, self._indices, self._axes):
            if spec.type in _VELOCITY:
                values = np.zeros(len(index)) if command is None else command[index]
                out.append(conversions.twist(axes, values) if spec.type == CommandType.TWIST
                           else conversions.twist_stamped(axes, values, stamp=stamp,
                                                          frame_id=self.frame_id))
            elif command is None:
                out.append(None)
            elif spec.type == CommandType.JOINT_TRAJECTORY:
                out.append(conversions.joint_trajectory(spec.joint_names or spec.names,
                                                        command[index],
                                                        time_from_start=self._period))
            else:
                out.append(conversions.float64_multi_array(command[index]))
        return out
