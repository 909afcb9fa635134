"""
Provide the `mock` embodiment: a small arm (3 joints + gripper, one camera) for node tests.

It is a real, registered adapter (config/robots/mock.yaml) so that tests run the real node and
pipeline end to end with `make_example` inputs; nothing about it is faked except the robot.
"""

from typing import ClassVar

from embodiment_adapters import register_embodiment
from embodiment_adapters.single_arm import SingleArmAdapter


@register_embodiment('mock')
class MockAdapter(SingleArmAdapter):
    """
    Mock arm; state and actions (4,): [mock_joint1, mock_joint2, mock_joint3, gripper].

    Inputs: joint states on /mock/joint_states; one camera 'cam_main' -> base_0_rgb.
    """

    EXAMPLE_PROMPT: ClassVar[str] = 'wave'
