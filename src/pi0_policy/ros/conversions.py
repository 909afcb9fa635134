"""
Convert ROS messages to numpy observations and action arrays to ROS messages.

Pure functions: nothing here touches a Node, a publisher or a parameter (HS-2). Malformed input
raises ``ValueError`` naming what was wrong, the value given and what was expected; the node turns
that into a diagnostic and a hold, never a crash.

Axis letters: H = image height, W = image width, C = channels, T = chunk horizon, D = robot dof.
"""

from collections.abc import Sequence
import io

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Twist, TwistStamped
from nav_msgs.msg import Odometry
import numpy as np
from pi0_msgs.msg import ActionChunk
from PIL import Image as PilImage
from rclpy.exceptions import InvalidTopicNameException
from rclpy.expand_topic_name import expand_topic_name
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

try:  # cv_bridge exists only in a full ROS install; the built-in path below is equivalent.
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the install
    CvBridge = None

# Raw encodings the built-in path decodes (8 bits per channel, so endianness is irrelevant).
ENCODING_CHANNELS: dict[str, int] = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
# Channel slice that turns each encoding into RGB (None: replicate the single channel); slices
# give views, where index lists would copy.
_TO_RGB: dict[str, slice | None] = {
    'rgb8': slice(0, 3), 'bgr8': slice(2, None, -1), 'rgba8': slice(0, 3),
    'bgra8': slice(2, None, -1), 'mono8': None}
_FROM_RGB: dict[str, slice] = {
    'rgb8': slice(0, 3), 'bgr8': slice(2, None, -1), 'rgba8': slice(0, 3),
    'bgra8': slice(2, None, -1)}
RGB_CHANNELS = 3
NANOSECONDS = 1_000_000_000
# Compressed formats Pillow decodes here, keyed by the words image_transport puts in `format`.
COMPRESSED_FORMATS: dict[str, str] = {'jpeg': 'JPEG', 'jpg': 'JPEG', 'png': 'PNG'}
_MAGIC: dict[bytes, str] = {b'\xff\xd8\xff': 'JPEG', b'\x89PNG\r\n\x1a\n': 'PNG'}
DEFAULT_JPEG_QUALITY = 90
# Base axes (robot config `base.dims[].axis`) and the Twist field each drives.
TWIST_FIELDS: dict[str, tuple[str, str]] = {
    'linear_x': ('linear', 'x'), 'linear_y': ('linear', 'y'), 'linear_z': ('linear', 'z'),
    'angular_x': ('angular', 'x'), 'angular_y': ('angular', 'y'), 'angular_z': ('angular', 'z')}
# Odometry twist fields in the order of the base state vector (vx, vy, wz).
ODOM_TWIST_FIELDS: tuple[tuple[str, str], ...] = (('linear', 'x'), ('linear', 'y'),
                                                  ('angular', 'z'))


def cv_bridge_available() -> bool:
    """Return whether cv_bridge can be imported (a full ROS install)."""
    return CvBridge is not None


def to_seconds(stamp: Time | Duration) -> float:
    """Return a builtin_interfaces Time or Duration in seconds."""
    return stamp.sec + stamp.nanosec / NANOSECONDS


def to_time(seconds: float) -> Time:
    """Return ``seconds`` (>= 0) as a builtin_interfaces Time."""
    nanoseconds = int(round(seconds * NANOSECONDS))
    return Time(sec=nanoseconds // NANOSECONDS, nanosec=nanoseconds % NANOSECONDS)


def to_duration(seconds: float) -> Duration:
    """Return ``seconds`` (>= 0) as a builtin_interfaces Duration."""
    nanoseconds = int(round(seconds * NANOSECONDS))
    return Duration(sec=nanoseconds // NANOSECONDS, nanosec=nanoseconds % NANOSECONDS)


def check_topic_name(topic: str, what: str, *, node_name: str, namespace: str) -> str:
    """
    Check that ``topic`` is a valid ROS topic name and return it fully expanded.

    Args:
        topic: The topic as configured (absolute, relative or ``~/`` private).
        what: What the topic is for, used in the error (e.g. "camera 'cam_high' of robot ...").
        node_name: Name of the node that will use the topic (expands ``~``).
        namespace: Namespace of that node (expands relative names).

    Returns:
        The fully qualified topic name.

    Raises:
        ValueError: The name is not a valid ROS topic name (rcl's rules: alphanumerics, '_',
            '/', no '//', not starting with a digit, ...).

    """
    try:
        full = expand_topic_name(topic, node_name, namespace)
        validate_full_topic_name(full)
    except (ValueError, InvalidTopicNameException) as error:
        raise ValueError(f'Topic {topic!r} of {what} is not a valid ROS topic name: {error}. '
                         "Expected names like '/camera_high/image_raw' (alphanumerics, '_' and "
                         "'/' only); fix the topic in the configuration.") from error
    return full


def check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """
    Raise when an image of ``width`` x ``height`` has more than ``max_pixels`` pixels.

    Raises:
        ValueError: Too many pixels; the message names the size and the limit.

    """
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f'{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels; expected at '
            f'most {max_pixels / 1e6:.1f} (max_image_pixels). Lower the camera resolution or '
            'raise max_image_pixels; the image was not decoded.')


def validate_image(msg: Image, *, max_pixels: int | None = None) -> None:
    """
    Check a raw ``sensor_msgs/Image`` without decoding it.

    Args:
        msg: The image message.
        max_pixels: Most pixels accepted (None: no bound).

    Raises:
        ValueError: The encoding is not one of ``ENCODING_CHANNELS``, the size is zero, ``step``
            is shorter than a row, or ``data`` is shorter than ``step * height``.

    """
    if msg.encoding not in ENCODING_CHANNELS:
        raise ValueError(
            f'Image encoding {msg.encoding!r} is not supported; expected one of '
            f'{sorted(ENCODING_CHANNELS)}. Configure the camera driver to publish one of them '
            'or subscribe to its compressed topic.')
    if msg.height == 0 or msg.width == 0:
        raise ValueError(f'Image size is {msg.width}x{msg.height}; expected a non-empty image.')
    check_pixels(msg.width, msg.height, max_pixels, 'Image')
    row_bytes = msg.width * ENCODING_CHANNELS[msg.encoding]
    if msg.step < row_bytes:
        raise ValueError(
            f'Image step {msg.step} is shorter than one row of {msg.width} {msg.encoding} pixels '
            f'({row_bytes} bytes); expected step >= {row_bytes}.')
    if len(msg.data) < msg.step * msg.height:
        raise ValueError(
            f'Image data is truncated: {len(msg.data)} bytes for {msg.height} rows of step '
            f'{msg.step}; expected {msg.step * msg.height} bytes.')


def image_to_rgb(msg: Image, *, use_cv_bridge: bool | None = None,
                 copy: bool = False) -> np.ndarray:
    """
    Decode a raw ``sensor_msgs/Image`` into an RGB array, without copying the pixels.

    The built-in path returns a read-only view of ``msg.data`` in RGB channel order: row
    padding is skipped by strides, bgr8/bgra8 reverse the channel axis (negative stride), rgba8
    drops alpha by stride and mono8 repeats its one channel (zero stride).
    ``pi0_policy.runtime.transforms.resize_with_pad`` resizes such views without a full-size
    copy, so the only full-resolution pass is the resize itself.

    Args:
        msg: The image message (rgb8, bgr8, rgba8, bgra8 or mono8, any row padding).
        use_cv_bridge: Use cv_bridge (True), the built-in path (False) or cv_bridge when it is
            importable (None).
        copy: Return a C-contiguous array that owns its pixels (e.g. to keep frames after the
            message is gone or to write into them).

    Returns:
        The image, (H, W, 3) uint8: a read-only strided view of the message, or a C-contiguous
        copy when ``copy`` is True or cv_bridge decoded it.

    Raises:
        ValueError: The message is malformed (see ``validate_image``), or cv_bridge was asked for
            but is not installed.

    """
    validate_image(msg)
    if use_cv_bridge is None:
        use_cv_bridge = cv_bridge_available()
    if use_cv_bridge:
        if CvBridge is None:
            raise ValueError('use_cv_bridge=True but cv_bridge is not importable; install '
                             'ros-<distro>-cv-bridge or pass use_cv_bridge=False.')
        rgb = CvBridge().imgmsg_to_cv2(msg, desired_encoding='rgb8')
        return np.ascontiguousarray(rgb)
    channels = ENCODING_CHANNELS[msg.encoding]
    rows = np.frombuffer(msg.data, np.uint8, count=msg.step * msg.height)  # no copy
    pixels = rows.reshape(msg.height, msg.step)[:, :msg.width * channels]
    pixels = pixels.reshape(msg.height, msg.width, channels)  # (H, W, C) view
    order = _TO_RGB[msg.encoding]
    if order is None:
        rgb = np.broadcast_to(pixels, (msg.height, msg.width, RGB_CHANNELS))
    else:
        rgb = pixels[:, :, order]
    if copy:
        return np.array(rgb, order='C')  # always a copy (ascontiguousarray may return a view)
    rgb = rgb.view()
    rgb.flags.writeable = False  # a view of the message: writing would change the message
    return rgb


def rgb_to_image(rgb: np.ndarray, *, encoding: str = 'rgb8', stamp: Time | None = None,
                 frame_id: str = '', padding: int = 0) -> Image:
    """
    Encode an RGB array as a raw ``sensor_msgs/Image``.

    Args:
        rgb: (H, W, 3) uint8 image.
        encoding: Target encoding, one of ``ENCODING_CHANNELS``.
        stamp: Header stamp (zero when None).
        frame_id: Header frame id.
        padding: Extra bytes at the end of each row (``step = W * C + padding``).

    Returns:
        The image message.

    Raises:
        ValueError: ``rgb`` is not (H, W, 3) uint8 or the encoding is unsupported.

    """
    if rgb.ndim != 3 or rgb.shape[2] != RGB_CHANNELS or rgb.dtype != np.uint8:
        raise ValueError(f'Expected an (H, W, 3) uint8 image; got shape {rgb.shape} and dtype '
                         f'{rgb.dtype}.')
    if encoding not in ENCODING_CHANNELS:
        raise ValueError(f'Encoding {encoding!r} is not supported; expected one of '
                         f'{sorted(ENCODING_CHANNELS)}.')
    height, width, _ = rgb.shape
    if encoding == 'mono8':
        pixels = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    else:
        pixels = rgb[:, :, _FROM_RGB[encoding]]
        if ENCODING_CHANNELS[encoding] == 4:
            alpha = np.full((height, width, 1), np.iinfo(np.uint8).max, np.uint8)
            pixels = np.concatenate([pixels, alpha], axis=2)
    rows = pixels.reshape(height, -1)
    if padding:
        rows = np.concatenate([rows, np.zeros((height, padding), np.uint8)], axis=1)
    msg = Image(header=Header(stamp=stamp or Time(), frame_id=frame_id), height=height,
                width=width, encoding=encoding, is_bigendian=0, step=rows.shape[1])
    msg.data = np.ascontiguousarray(rows).tobytes()
    return msg


def _compressed_kind(msg: CompressedImage) -> str:
    """Return 'JPEG' or 'PNG' from the format string, or else from the magic bytes."""
    words = msg.format.lower().replace(';', ' ').split()
    for word in words:
        if word in COMPRESSED_FORMATS:
            return COMPRESSED_FORMATS[word]
    head = bytes(msg.data[:8])
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    raise ValueError(f'CompressedImage format {msg.format!r} is not supported; expected JPEG or '
                     'PNG (image_transport "compressed"). Use a jpeg/png compressed topic.')


def compressed_size(msg: CompressedImage) -> tuple[int, int]:
    """
    Return (width, height) of a JPEG or PNG ``CompressedImage`` from its header, not decoding it.

    Raises:
        ValueError: The format is not JPEG/PNG or the header does not parse.

    """
    kind = _compressed_kind(msg)
    try:
        with PilImage.open(io.BytesIO(bytes(msg.data)), formats=[kind]) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, PilImage.DecompressionBombError) as error:
        raise ValueError(f'CompressedImage ({msg.format!r}, {len(msg.data)} bytes) does not '
                         f'decode as {kind} (no valid header): {error}. Check the camera driver '
                         'output.') from error


def compressed_to_rgb(msg: CompressedImage, *, max_pixels: int | None = None) -> np.ndarray:
    """
    Decode a JPEG or PNG ``sensor_msgs/CompressedImage`` into an RGB array.

    Args:
        msg: The compressed image message.
        max_pixels: Most pixels accepted, checked from the header before decoding (None: no
            bound beyond Pillow's own decompression-bomb limit).

    Returns:
        The image, (H, W, 3) uint8.

    Raises:
        ValueError: The format is not JPEG/PNG, the image is larger than ``max_pixels`` or the
            data does not decode.

    """
    kind = _compressed_kind(msg)
    check_pixels(*compressed_size(msg), max_pixels, f'CompressedImage ({kind})')
    try:
        with PilImage.open(io.BytesIO(bytes(msg.data)), formats=[kind]) as image:
            rgb = np.asarray(image.convert('RGB'))
    except (OSError, SyntaxError, ValueError, PilImage.DecompressionBombError) as error:
        raise ValueError(f'CompressedImage ({msg.format!r}, {len(msg.data)} bytes) does not '
                         f'decode as {kind}: {error}. Check the camera driver output.') from error
    return np.ascontiguousarray(rgb)


def rgb_to_compressed(rgb: np.ndarray, *, fmt: str = 'jpeg', stamp: Time | None = None,
                      quality: int = DEFAULT_JPEG_QUALITY) -> CompressedImage:
    """
    Encode an (H, W, 3) uint8 RGB array as a JPEG or PNG ``CompressedImage``.

    Raises:
        ValueError: ``fmt`` is not 'jpeg' or 'png'.

    """
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f'Compressed format {fmt!r} is not supported; expected one of '
                         f'{sorted(COMPRESSED_FORMATS)}.')
    buffer = io.BytesIO()
    PilImage.fromarray(rgb).save(buffer, format=COMPRESSED_FORMATS[fmt], quality=quality)
    msg = CompressedImage(header=Header(stamp=stamp or Time()), format=fmt)
    msg.data = buffer.getvalue()
    return msg


def joint_state_to_arrays(msg: JointState, *, prefix: str = '') -> tuple[tuple[str, ...],
                                                                         np.ndarray]:
    """
    Return the prefixed joint names and positions of a ``JointState``.

    Args:
        msg: The joint state message.
        prefix: Prepended to every name (robots whose arms publish the same joint names).

    Returns:
        (names, positions (N,) float64).

    Raises:
        ValueError: Names and positions differ in length, or a name is empty or repeated.

    Positions are not checked for NaN/Inf here: drivers publish NaN for passive or mimic joints
    the robot does not use, and the embodiment adapter checks the joints it uses.

    """
    names = tuple(msg.name)
    if len(names) != len(msg.position):
        raise ValueError(f'JointState has {len(names)} names but {len(msg.position)} positions; '
                         'expected one position per name.')
    if any(not name for name in names):
        raise ValueError(f'JointState has an empty joint name in {list(names)}; every joint '
                         'needs a name.')
    if len(set(names)) != len(names):
        raise ValueError(f'JointState repeats joint names in {list(names)}; expected unique '
                         'names.')
    positions = np.asarray(msg.position, np.float64)
    return tuple(prefix + name for name in names), positions


def odometry_to_base_velocity(msg: Odometry) -> np.ndarray:
    """
    Return the base velocity (vx, vy, wz) of an ``Odometry`` message in its child frame.

    Raises:
        ValueError: A component is NaN/Inf.

    """
    twist = msg.twist.twist
    velocity = np.array([getattr(getattr(twist, group), axis)
                         for group, axis in ODOM_TWIST_FIELDS], np.float64)  # (3,)
    if not np.all(np.isfinite(velocity)):
        raise ValueError(f'Odometry twist {velocity.tolist()} is not finite; expected finite '
                         'velocities.')
    return velocity


def joint_trajectory(names: Sequence[str], positions: np.ndarray, *, time_from_start: float,
                     stamp: Time | None = None) -> JointTrajectory:
    """
    Build a one-point ``JointTrajectory`` for a joint_trajectory_controller.

    Args:
        names: Joint names, one per position.
        positions: (D,) target positions.
        time_from_start: Seconds at which the point is to be reached.
        stamp: Header stamp; zero (the default) means "start now" for the controller.

    """
    point = JointTrajectoryPoint(time_from_start=to_duration(time_from_start))
    point.positions = [float(value) for value in positions]
    return JointTrajectory(header=Header(stamp=stamp or Time()), joint_names=list(names),
                           points=[point])


def float64_multi_array(values: np.ndarray) -> Float64MultiArray:
    """Build a ``Float64MultiArray`` for a forward_command_controller from (D,) values."""
    msg = Float64MultiArray()
    msg.data = [float(value) for value in values]
    return msg


def twist(axes: Sequence[str], values: np.ndarray) -> Twist:
    """
    Build a ``Twist`` from base velocities; fields not named in ``axes`` stay zero.

    Args:
        axes: Twist field per value, e.g. ('linear_x', 'angular_z') (robot config base axes).
        values: (B,) velocities in m/s and rad/s.

    Raises:
        ValueError: An axis is not a Twist field.

    """
    msg = Twist()
    for axis, value in zip(axes, values):
        if axis not in TWIST_FIELDS:
            raise ValueError(f'Base axis {axis!r} is not a Twist field; expected one of '
                             f'{sorted(TWIST_FIELDS)}.')
        group, component = TWIST_FIELDS[axis]
        setattr(getattr(msg, group), component, float(value))
    return msg


def twist_stamped(axes: Sequence[str], values: np.ndarray, *, stamp: Time,
                  frame_id: str = '') -> TwistStamped:
    """Build a ``TwistStamped`` (diff_drive_controller on Jazzy) like ``twist``."""
    return TwistStamped(header=Header(stamp=stamp, frame_id=frame_id), twist=twist(axes, values))


def action_chunk(*, stamp: Time, embodiment: str, sequence: int, instruction: str,
                 control_period: float, joint_names: Sequence[str], actions: np.ndarray,
                 unified_names: Sequence[str], unified_actions: np.ndarray,
                 inference_latency: float) -> ActionChunk:
    """
    Build a ``pi0_msgs/ActionChunk`` (arrays row-major, horizon x dof).

    Args:
        stamp: Time of the observation the chunk was computed from.
        embodiment: Robot configuration name.
        sequence: Chunk counter.
        instruction: The instruction the chunk was conditioned on.
        control_period: Seconds between consecutive actions.
        joint_names: Robot-native dimension names, D of them.
        actions: (T, D) actions in robot units.
        unified_names: Names of the U unified dims.
        unified_actions: (T, U) actions in the unified space.
        inference_latency: Seconds from observation to chunk.

    Raises:
        ValueError: The array shapes do not match the names.

    """
    actions = np.asarray(actions, np.float64)
    unified_actions = np.asarray(unified_actions, np.float64)
    if actions.ndim != 2 or actions.shape[1] != len(joint_names):
        raise ValueError(f'actions have shape {actions.shape}; expected (horizon, '
                         f'{len(joint_names)}) for joint names {list(joint_names)}.')
    if unified_actions.shape != (actions.shape[0], len(unified_names)):
        raise ValueError(f'unified_actions have shape {unified_actions.shape}; expected '
                         f'({actions.shape[0]}, {len(unified_names)}).')
    msg = ActionChunk(header=Header(stamp=stamp), embodiment=embodiment, sequence=sequence,
                      instruction=instruction, horizon=actions.shape[0], dof=actions.shape[1],
                      control_period=to_duration(control_period), joint_names=list(joint_names),
                      unified_dof=len(unified_names), unified_names=list(unified_names),
                      inference_latency=float(inference_latency))
    msg.actions = actions.ravel().tolist()
    msg.unified_actions = unified_actions.ravel().tolist()
    return msg
