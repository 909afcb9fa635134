"""
Build rviz previews of an action chunk: a JointState ghost and a MarkerArray of joint trajectories.

Pure functions, no Node. The ghost (``~/preview/joint_states``) holds the joint positions at the
end of the chunk; feed it to a second robot_state_publisher under another namespace to see a ghost
robot. The markers (``~/preview/markers``) draw one LINE_STRIP per joint, time along x and the
position scaled into its joint limits along z, one lane per joint along y, with a text label.
Axis letters: T = chunk horizon, D = robot dof.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

TRAJECTORY_NAMESPACE = 'pi0_chunk'
LABEL_NAMESPACE = 'pi0_labels'
# Hue steps between consecutive joints so neighbouring lanes differ in colour.
_GOLDEN_RATIO = 0.618033988749895
_IDENTITY = Quaternion(w=1.0)


@dataclass(frozen=True)
class PreviewStyle:
    """Layout of the trajectory chart, in metres of the preview frame."""

    # Frame the chart is drawn in.
    frame_id: str = 'base_link'
    # Metres of x per second of chunk time.
    time_scale: float = 0.5
    # Distance between the lanes of consecutive joints along y.
    lane_spacing: float = 0.05
    # Height of a lane along z (the joint range maps onto it).
    lane_height: float = 0.2
    # Line width and label height.
    line_width: float = 0.005
    text_height: float = 0.02


def ghost_joint_state(names: Sequence[str], actions: np.ndarray, *, stamp: Time,
                      is_velocity: np.ndarray) -> JointState:
    """
    Return a JointState at the last action of the chunk (position dims only).

    Args:
        names: Action dim names, D of them.
        actions: (T, D) chunk in robot units.
        stamp: Header stamp.
        is_velocity: (D,) bool mask of velocity dims (the base), left out of the ghost.

    """
    keep = ~np.asarray(is_velocity, bool)
    msg = JointState(header=Header(stamp=stamp),
                     name=[name for name, k in zip(names, keep) if k])
    msg.position = [float(value) for value in np.asarray(actions)[-1, keep]]
    return msg


def _color(index: int) -> ColorRGBA:
    """Return a distinct opaque colour for lane ``index``."""
    hue = (index * _GOLDEN_RATIO) % 1.0
    red, green, blue = (0.5 + 0.5 * np.cos(2.0 * np.pi * (hue + shift))
                        for shift in (0.0, 1.0 / 3.0, 2.0 / 3.0))
    return ColorRGBA(r=float(red), g=float(green), b=float(blue), a=1.0)


def trajectory_markers(names: Sequence[str], actions: np.ndarray, *, control_period: float,
                       lower: np.ndarray, upper: np.ndarray, is_velocity: np.ndarray,
                       stamp: Time, style: PreviewStyle = PreviewStyle()) -> MarkerArray:
    """
    Return a MarkerArray charting each position dim of the chunk over time.

    The first marker is DELETEALL so markers of a previous chunk with more joints disappear.

    Args:
        names: Action dim names, D of them.
        actions: (T, D) chunk in robot units.
        control_period: Seconds between consecutive actions.
        lower: (D,) lower limits; upper: (D,) upper limits (positions are scaled into them).
        upper: (D,) upper limits.
        is_velocity: (D,) bool mask of velocity dims, which are not charted.
        stamp: Header stamp.
        style: Chart layout.

    """
    actions = np.asarray(actions, np.float64)
    header = Header(stamp=stamp, frame_id=style.frame_id)
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    times = np.arange(actions.shape[0]) * control_period * style.time_scale  # (T,)
    span = np.where(upper > lower, upper - lower, 1.0)  # (D,)
    lane = 0
    for dim, name in enumerate(names):
        if is_velocity[dim]:
            continue
        fraction = np.clip((actions[:, dim] - lower[dim]) / span[dim], 0.0, 1.0)  # (T,)
        y = lane * style.lane_spacing
        strip = Marker(header=header, ns=TRAJECTORY_NAMESPACE, id=lane, type=Marker.LINE_STRIP,
                       action=Marker.ADD, pose=Pose(orientation=_IDENTITY),
                       scale=Vector3(x=style.line_width), color=_color(lane),
                       lifetime=Duration())
        strip.points = [Point(x=float(t), y=y, z=float(f) * style.lane_height)
                        for t, f in zip(times, fraction)]
        label = Marker(header=header, ns=LABEL_NAMESPACE, id=lane, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, text=name, scale=Vector3(z=style.text_height),
                       color=_color(lane),
                       pose=Pose(position=Point(x=-style.text_height, y=y), orientation=_IDENTITY))
        markers += [strip, label]
        lane += 1
    return MarkerArray(markers=markers)


def chunk_preview(adapter: Any, actions: np.ndarray, *, control_period: float, stamp: Time,
                  frame_id: str) -> tuple[JointState, MarkerArray]:
    """
    Return the ghost JointState and the MarkerArray of a chunk for an embodiment adapter.

    Args:
        adapter: The embodiment adapter (action names, limits, velocity mask).
        actions: (T, D) chunk in robot units.
        control_period: Seconds between consecutive actions.
        stamp: Header stamp.
        frame_id: Frame of the markers.

    """
    ghost = ghost_joint_state(adapter.action_names, actions, stamp=stamp,
                              is_velocity=adapter.is_velocity)
    markers = trajectory_markers(
        adapter.action_names, actions, control_period=control_period, lower=adapter.lower,
        upper=adapter.upper, is_velocity=adapter.is_velocity, stamp=stamp,
        style=PreviewStyle(frame_id=frame_id))
    return ghost, markers
