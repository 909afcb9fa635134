"""
Read ROS message fields into numpy, for messages of any origin (rclpy or ``rosbags``).

Only field names are used (``msg.header.stamp.sec``, ``msg.data``, ...), so the same functions
decode live rclpy messages and the dataclasses ``rosbags`` deserialises from a bag. Raw images
follow ``pi0_policy.ros.conversions`` (same encodings); this module exists because the rosbag
import must work without rclpy.
"""

from __future__ import annotations

from collections.abc import Sequence
import io
from typing import Any

import numpy as np
from PIL import Image as PilImage

NANOSECONDS = 1_000_000_000
# Raw encodings and their channels; their channel order to RGB (None: grey replicated).
ENCODING_CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
_TO_RGB = {'rgb8': [0, 1, 2], 'bgr8': [2, 1, 0], 'rgba8': [0, 1, 2], 'bgra8': [2, 1, 0],
           'mono8': None}


def stamp_seconds(msg: Any) -> float | None:
    """Return the header stamp in seconds, or None when the message has none or it is zero."""
    header = getattr(msg, 'header', None)
    if header is None:
        return None
    t = int(header.stamp.sec) + int(header.stamp.nanosec) / NANOSECONDS
    return t if t > 0 else None


def raw_image_to_rgb(msg: Any) -> np.ndarray:
    """
    Decode a sensor_msgs/Image into a C-contiguous (H, W, 3) uint8 RGB copy.

    Raises:
        ValueError: On an unsupported encoding or truncated data.
    """
    channels = ENCODING_CHANNELS.get(msg.encoding)
    if channels is None:
        raise ValueError(f'Image encoding {msg.encoding!r} is not supported; expected one of '
                         f'{sorted(ENCODING_CHANNELS)}.')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data,
                         np.uint8)
    if h == 0 or w == 0 or step < w * channels or data.size < step * h:
        raise ValueError(f'Image of {w}x{h} {msg.encoding} with step {step} has {data.size} '
                         f'bytes; expected step >= {w * channels} and {step * h} bytes.')
    pixels = data[:step * h].reshape(h, step)[:, :w * channels].reshape(h, w, channels)
    order = _TO_RGB[msg.encoding]
    rgb = np.repeat(pixels, 3, axis=2) if order is None else pixels[:, :, order]
    return np.ascontiguousarray(rgb)


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """
    Decode a sensor_msgs/CompressedImage (JPEG or PNG) into (H, W, 3) uint8 RGB.

    Raises:
        ValueError: When the data does not decode.
    """
    try:
        with PilImage.open(io.BytesIO(bytes(msg.data))) as image:
            return np.ascontiguousarray(np.asarray(image.convert('RGB')))
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f'CompressedImage ({msg.format!r}, {len(msg.data)} bytes) does not '
                         f'decode: {e}.') from e


def joint_state(msg: Any, prefix: str = '') -> tuple[tuple[str, ...], np.ndarray]:
    """
    Return the prefixed names and positions of a sensor_msgs/JointState.

    Raises:
        ValueError: When names and positions differ in length.
    """
    names = tuple(prefix + n for n in msg.name)
    positions = np.asarray(msg.position, np.float64).reshape(-1)
    if len(names) != positions.shape[0]:
        raise ValueError(f'JointState has {len(names)} names but {positions.shape[0]} '
                         'positions; expected one position per name.')
    return names, positions


def joint_command(msg: Any, names: Sequence[str], joint_names: Sequence[str]
                  ) -> tuple[tuple[str, ...], np.ndarray]:
    """
    Return (robot action names, values) of a position command.

    A trajectory_msgs/JointTrajectory gives its first point, matched by ``joint_names`` (the
    names in the message; empty: the configured order); a std_msgs/Float64MultiArray gives its
    data in the configured order.

    Args:
        msg: The command message.
        names: The command's robot action names (CommandSpec.names).
        joint_names: The names written into the message (CommandSpec.joint_names).

    Raises:
        ValueError: When the command does not carry exactly the configured joints.
    """
    if hasattr(msg, 'points'):
        if not msg.points:
            raise ValueError('JointTrajectory has no point; expected at least one.')
        values = np.asarray(msg.points[0].positions, np.float64)
        sent = list(msg.joint_names) or list(joint_names or names)
        lookup = dict(zip(joint_names or names, names))
        if sorted(sent) != sorted(lookup) or len(values) != len(sent):
            raise ValueError(f'JointTrajectory carries joints {sent} with {len(values)} '
                             f'positions; expected the joints {list(lookup)}.')
        return tuple(lookup[n] for n in sent), values
    values = np.asarray(msg.data, np.float64).reshape(-1)
    if len(values) != len(names):
        raise ValueError(f'Command has {len(values)} values; expected {len(names)} for '
                         f'{list(names)}.')
    return tuple(names), values


def twist_command(msg: Any, names: Sequence[str], axes: Sequence[str]
                  ) -> tuple[tuple[str, ...], np.ndarray]:
    """Return (base action names, velocities) of a Twist or TwistStamped by axis name."""
    twist = getattr(msg, 'twist', msg)
    values = [getattr(getattr(twist, axis.split('_')[0]), axis.split('_')[1]) for axis in axes]
    return tuple(names), np.asarray(values, np.float64)
