"""
Build rviz previews of an action chunk: JointState ghosts and a MarkerArray of joint trajectories.

Pure functions, no Node. A ghost holds the joint positions at the end of the chunk, named as the
robot's command interfaces name them (``CommandSpec.joint_names``, e.g. ALOHA's ``waist``, not the
adapter's ``left_waist``): that is what the robot's own robot_state_publisher reads, so a second
one under another namespace, fed the ghost, draws a ghost robot. There is one ghost per joint-state
topic of the robot config (``ghost_groups``): a robot with one topic gets
``~/preview/joint_states``; a robot whose arms publish separately (ALOHA) gets one per arm, under
the namespace of the arm's topic (``/follower_left/joint_states`` ->
``~/preview/follower_left/joint_states``), matching the per-arm robot_state_publishers. Base
(velocity) dims are left out. The markers (``~/preview/markers``) draw one LINE_STRIP per joint,
time along x and the position scaled into its joint limits along z, one lane per joint along y,
with a text label. Axis letters: T = chunk horizon, D = robot dof.
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
# Ghost topic (private to the node) of a robot with one joint-state topic; with several, the
# topic's namespace goes between PREVIEW_PREFIX and GHOST_TOPIC_NAME.
PREVIEW_PREFIX = '~/preview'
GHOST_TOPIC_NAME = 'joint_states'
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


@dataclass(frozen=True)
class GhostGroup:
    """The position dims one ghost JointState carries, and the topic it goes to."""

    # Node-private topic of the ghost, e.g. '~/preview/joint_states'.
    topic: str
    # Indices of the dims in the adapter's action_names (position dims only).
    dims: tuple[int, ...]
    # Joint names written into the message, one per dim (the robot's own names).
    names: tuple[str, ...]


def ghost_groups(adapter: Any) -> tuple[GhostGroup, ...]:
    """
    Split the position dims of an adapter into one ghost per joint-state topic.

    Args:
        adapter: The embodiment adapter (action names, commands, joint-state topics).

    Returns:
        The ghost groups; dims a joint-state prefix does not claim go to the first topic.

    """
    robot_names = {name: (spec.joint_names or spec.names)[i]
                   for spec in adapter.commands for i, name in enumerate(spec.names)}
    topics = adapter.joint_state_topics
    # Longest prefix first, so '' (no prefix) only takes what no other topic claims.
    by_prefix = sorted(range(len(topics)), key=lambda t: len(topics[t].prefix), reverse=True)
    members: list[list[int]] = [[] for _ in topics]
    for dim, name in enumerate(adapter.action_names):
        if adapter.is_velocity[dim]:
            continue
        owner = next((t for t in by_prefix if name.startswith(topics[t].prefix)), 0)
        members[owner].append(dim)
    groups = []
    for index, (topic, dims) in enumerate(zip(topics, members)):
        if not dims:
            continue
        namespace = topic.topic.rsplit('/', 1)[0].strip('/') or f'group{index}'
        name = (f'{PREVIEW_PREFIX}/{GHOST_TOPIC_NAME}' if len(topics) == 1
                else f'{PREVIEW_PREFIX}/{namespace}/{GHOST_TOPIC_NAME}')
        groups.append(GhostGroup(
            name, tuple(dims), tuple(robot_names.get(adapter.action_names[d],
                                                     adapter.action_names[d]) for d in dims)))
    return tuple(groups)


def ghost_joint_states(groups: Sequence[GhostGroup], actions: np.ndarray, *,
                       stamp: Time) -> list[JointState]:
    """
    Return one ghost JointState per group at the last action of the chunk.

    Args:
        groups: From ``ghost_groups``.
        actions: (T, D) chunk in robot units.
        stamp: Header stamp.

    """
    last = np.asarray(actions)[-1]  # (D,)
    messages = []
    for group in groups:
        msg = JointState(header=Header(stamp=stamp), name=list(group.names))
        msg.position = [float(last[d]) for d in group.dims]
        messages.append(msg)
    return messages


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


def chunk_preview(adapter: Any, groups: Sequence[GhostGroup], actions: np.ndarray, *,
                  control_period: float, stamp: Time, frame_id: str
                  ) -> tuple[list[JointState], MarkerArray]:
    """
    Return the ghost JointStates (one per group) and the MarkerArray of a chunk.

    Args:
        adapter: The embodiment adapter (action names, limits, velocity mask).
        groups: The adapter's ``ghost_groups``.
        actions: (T, D) chunk in robot units.
        control_period: Seconds between consecutive actions.
        stamp: Header stamp.
        frame_id: Frame of the markers.

    """
    ghosts = ghost_joint_states(groups, actions, stamp=stamp)
    markers = trajectory_markers(
        adapter.action_names, actions, control_period=control_period, lower=adapter.lower,
        upper=adapter.upper, is_velocity=adapter.is_velocity, stamp=stamp,
        style=PreviewStyle(frame_id=frame_id))
    return ghosts, markers
