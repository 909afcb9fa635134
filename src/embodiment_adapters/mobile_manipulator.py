"""
Adapt mobile manipulators: two 6-DoF arms, two grippers, a holonomic base and a torso lift.

Layout (18): arms and grippers in 0-13 as for bimanual robots, base velocities in 14/15/16 (each
config declares which Twist component each dim is; the shipped config uses linear x, linear y,
yaw rate) and the torso lift (a position joint, metres) in 17. Base dims are velocities: never
delta actions, limited to +-max_velocity, and left out of the state unless ``base.in_state``.
"""

from typing import ClassVar

from embodiment_adapters import register_embodiment
from embodiment_adapters.common import EmbodimentAdapter
from embodiment_adapters.config import config_error, RobotConfig
from typing_extensions import override


@register_embodiment('mobile_manipulator')
class MobileManipulatorAdapter(EmbodimentAdapter):
    """
    Arms, grippers, torso and base; actions (18,) for the shipped config: 15 joints, then 3 base.

    Inputs: joint states by name (one /joint_states topic); optional measured base velocity;
    cameras from the config (head -> base_0_rgb, wrists -> left/right_wrist_0_rgb).
    """

    EXAMPLE_PROMPT: ClassVar[str] = 'drive to the table and pick up the bowl'

    @classmethod
    @override
    def validate_config(cls, config: RobotConfig) -> None:
        """
        Require at least one base dim.

        Args:
            config: the robot config.

        Raises:
            ValueError: if the config has no base.

        """
        super().validate_config(config)
        if not config.base:
            raise config_error(config.source, 'base', None, 'base.dims with at least one base '
                               'velocity', 'Declare the base or use single_arm / bimanual.')
