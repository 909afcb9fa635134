"""
The ROS side of the policy's inputs: message types, topic checks, message validation, decoding.

The buffer, the input specs and the observation assembly are pure and live in
:mod:`pi0_policy.runtime.inputs`; this module adds what needs ROS messages.
"""

from collections.abc import Sequence
from typing import Any

from nav_msgs.msg import Odometry
import numpy as np
from pi0_policy.ros import conversions
from pi0_policy.runtime.inputs import InputError, InputKind, InputSpec
from sensor_msgs.msg import CompressedImage, Image, JointState

MESSAGE_TYPES: dict[InputKind, type] = {
    InputKind.IMAGE: Image, InputKind.COMPRESSED_IMAGE: CompressedImage,
    InputKind.JOINT_STATES: JointState, InputKind.ODOMETRY: Odometry}


def check_topics(adapter: Any, specs: Sequence[InputSpec], *, node_name: str,
                 namespace: str) -> None:
    """
    Check every input and command topic of a robot before anything subscribes or publishes.

    Args:
        adapter: The embodiment adapter (command topics; its config source names the file).
        specs: The inputs (``input_specs``).
        node_name: Name of the node (expands ``~``).
        namespace: Namespace of the node (expands relative names).

    Raises:
        ValueError: A topic is not a valid ROS topic name; the message names the input or
            command, the robot config file and the rule broken.

    """
    where = f'robot config {adapter.config.source}'
    topics = ([(spec.topic, f'input {spec.name} ({where})') for spec in specs] +
              [(command.topic, f'command {command.type} ({where})')
               for command in adapter.commands])
    for topic, what in topics:
        conversions.check_topic_name(topic, what, node_name=node_name, namespace=namespace)


def check_message(spec: InputSpec, message: Any, *, max_pixels: int | None = None) -> Any:
    """
    Validate a message cheaply in its callback and return what the buffer stores.

    Raw images are checked without decoding; compressed images are stored as they are (decoded
    at inference time); joint states become (names, positions); odometry the (3,) base velocity.

    Raises:
        InputError: The message is malformed.

    """
    try:
        if spec.kind == InputKind.IMAGE:
            conversions.validate_image(message, max_pixels=max_pixels)
            return message
        if spec.kind == InputKind.COMPRESSED_IMAGE:
            conversions.check_pixels(*conversions.compressed_size(message), max_pixels,
                                     'CompressedImage')
            return message
        if spec.kind == InputKind.JOINT_STATES:
            return conversions.joint_state_to_arrays(message, prefix=spec.key)
        return conversions.odometry_to_base_velocity(message)
    except ValueError as error:
        raise InputError(spec, str(error)) from error


def decode_image(spec: InputSpec, message: Any, *, max_pixels: int | None = None
                 ) -> np.ndarray:
    """Decode a stored camera message into (H, W, 3) uint8."""
    try:
        if spec.kind == InputKind.COMPRESSED_IMAGE:
            return conversions.compressed_to_rgb(message, max_pixels=max_pixels)
        return conversions.image_to_rgb(message)
    except ValueError as error:
        raise InputError(spec, str(error)) from error
