"""
Adapt single-arm robots (Franka FR3 7 + gripper, UR5e 6 + gripper).

The arm sits in the left-arm slots: a 6-DoF arm uses dims 0-5 with its gripper in 6; a 7-DoF arm
uses dims 0-6 with its gripper in 7 (openpi's DROID convention, which overlaps the right-arm slots
on purpose). Gripper values follow openpi / pi data: 0 = open, 1 = closed (see common.py).
"""

from typing import ClassVar

from embodiment_adapters import register_embodiment
from embodiment_adapters.common import EmbodimentAdapter
from embodiment_adapters.config import config_error, RobotConfig
from typing_extensions import override

# A single arm has at most one gripper.
MAX_GRIPPERS = 1


@register_embodiment('single_arm')
class SingleArmAdapter(EmbodimentAdapter):
    """
    One arm with an optional gripper; state and actions (n_joints + 1,), e.g. (8,) for Franka.

    Inputs: joint states by name (e.g. fr3_joint1..7, fr3_finger_joint1); cameras from the config
    (exterior -> base_0_rgb, wrist -> left_wrist_0_rgb).
    """

    EXAMPLE_PROMPT: ClassVar[str] = 'put the cup on the plate'

    @classmethod
    @override
    def validate_config(cls, config: RobotConfig) -> None:
        """
        Reject base dims, several grippers and ALOHA's adapt_to_pi.

        Args:
            config: the robot config.

        Raises:
            ValueError: if the config does not describe one arm.

        """
        super().validate_config(config)
        if config.base:
            raise config_error(config.source, 'base', [b.name for b in config.base],
                               'no base dims for a single arm', 'Use embodiment: '
                               'mobile_manipulator.')
        grippers = [j.name for j in config.joints if j.gripper is not None]
        if len(grippers) > MAX_GRIPPERS:
            raise config_error(config.source, 'joints', grippers,
                               f'at most {MAX_GRIPPERS} gripper for a single arm',
                               'Use embodiment: bimanual for two arms.')
