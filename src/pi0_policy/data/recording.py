"""
Record a robot's topics into dataset episodes, driven by its robot config (no rclpy).

The robot config names the streams: every camera (``camera/<name>``), every joint-state topic
(``joints/<topic>``, merged by prefixed joint name into the adapter's state) and every command
topic (``command/<topic>``, merged by action name into the action actually commanded). The live
recorder node and ``pi0-policy bag2dataset`` both feed messages into ``RecordingSession`` with
their time (header stamp, or arrival / bag log time when the message has none), so both align
frames the same way (``pi0_policy.data.alignment``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import logging
import pathlib
from typing import Any

import numpy as np
from pi0_policy.data import messages
from pi0_policy.data.alignment import AlignedFrame, AlignmentConfig, FrameAligner, StreamKind
from pi0_policy.data.layout import DatasetSpec
from pi0_policy.data.writer import DatasetWriter, EpisodeWriter, SavedEpisode
from pi0_policy.runtime.inputs import merge_joint_states

_LOG = logging.getLogger(__name__)

# ROS 2 type names of the messages each stream accepts.
IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
JOINT_STATE = 'sensor_msgs/msg/JointState'
COMMAND_TYPES = {'joint_trajectory': 'trajectory_msgs/msg/JointTrajectory',
                 'forward_position': 'std_msgs/msg/Float64MultiArray',
                 'twist': 'geometry_msgs/msg/Twist',
                 'twist_stamped': 'geometry_msgs/msg/TwistStamped'}
# Default largest share of dropped ticks before an episode is refused.
DEFAULT_MAX_DROP_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One recorded topic."""

    # Stream name, e.g. 'camera/cam_high'.
    name: str
    # Topic.
    topic: str
    # ROS 2 message type name, e.g. 'sensor_msgs/msg/Image'.
    msg_type: str
    # Sensor (nearest sample) or command (held value).
    kind: StreamKind
    # Message -> stream value (image array, (names, positions)).
    decode: Callable[[Any], Any]


def robot_streams(adapter: Any, cameras: Sequence[str] | None = None) -> tuple[StreamSpec, ...]:
    """
    List the streams of a robot config.

    Args:
        adapter: The robot's ``EmbodimentAdapter``.
        cameras: Camera names to record; None: the cameras that feed a model slot.

    Returns:
        Camera, joint-state and command streams.

    Raises:
        ValueError: On an unknown camera, or a config with the base velocity in the state.
    """
    if adapter.config.base_in_state:
        raise ValueError(f'Robot {adapter.name!r} puts the base velocity in the state; '
                         'recording odometry into the state is not supported yet.')
    known = [c.name for c in adapter.cameras]
    chosen = ([c.name for c in adapter.cameras if c.model_slot is not None] if cameras is None
              else list(cameras))
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f'Unknown cameras {unknown}; robot {adapter.name!r} has {known}.')
    streams = []
    for cam in adapter.cameras:
        if cam.name in chosen:
            streams.append(StreamSpec(
                f'camera/{cam.name}', cam.topic, COMPRESSED_IMAGE if cam.compressed else IMAGE,
                StreamKind.SAMPLE, messages.compressed_image_to_rgb if cam.compressed
                else messages.raw_image_to_rgb))
    for topic in adapter.joint_state_topics:
        streams.append(StreamSpec(f'joints/{topic.topic}', topic.topic, JOINT_STATE,
                                  StreamKind.SAMPLE,
                                  lambda m, p=topic.prefix: messages.joint_state(m, p)))
    axes = {b.name: b.axis.value for b in adapter.config.base}
    for command in adapter.commands:
        kind = command.type.value
        if kind in ('twist', 'twist_stamped'):
            decode = (lambda m, c=command: messages.twist_command(
                m, c.names, [axes[n] for n in c.names]))
        else:
            decode = (lambda m, c=command: messages.joint_command(m, c.names, c.joint_names))
        streams.append(StreamSpec(f'command/{command.topic}', command.topic,
                                  COMMAND_TYPES[kind], StreamKind.HOLD, decode))
    return tuple(streams)


class RecordingSession:
    """Episodes of one robot into one dataset folder: start, push messages, save or discard."""

    def __init__(self, root: str | pathlib.Path, adapter: Any, config: AlignmentConfig, *,
                 cameras: Sequence[str] | None = None, video_codec: str = 'libx264',
                 max_drop_fraction: float = DEFAULT_MAX_DROP_FRACTION) -> None:
        """
        Prepare recording (the dataset folder is created with the first frame).

        Args:
            root: Dataset folder (new, or an existing dataset of the same robot to extend).
            adapter: The robot's ``EmbodimentAdapter``.
            config: Alignment rate and tolerances (``config.fps`` is the dataset rate).
            cameras: Cameras to record (None: those that feed a model slot).
            video_codec: PyAV encoder of the videos.
            max_drop_fraction: Largest share of dropped ticks an episode may have to be saved.

        Raises:
            ValueError: On a bad camera list or drop fraction.
        """
        if not 0.0 <= max_drop_fraction <= 1.0:
            raise ValueError(f'max_drop_fraction must be in [0, 1], got {max_drop_fraction}.')
        self.root = pathlib.Path(root)
        self.adapter = adapter
        self.config = config
        self.streams = robot_streams(adapter, cameras)
        self.by_topic = {s.topic: s for s in self.streams}
        self.video_codec = video_codec
        self.max_drop_fraction = max_drop_fraction
        self._writer: DatasetWriter | None = None
        self._episode: EpisodeWriter | None = None
        self._aligner: FrameAligner | None = None
        self._task = ''
        self._closing = None
        if (self.root / 'meta' / 'info.json').is_file():
            self._writer = DatasetWriter(self.root)
            self._check_dataset(self._writer.spec)

    @property
    def recording(self) -> bool:
        """Return whether an episode is open."""
        return self._aligner is not None

    @property
    def num_episodes(self) -> int:
        """Return the number of episodes saved in the dataset."""
        return self._writer.num_episodes if self._writer else 0

    @property
    def report(self) -> Any:
        """Return the open episode's ``AlignmentReport`` (None when idle)."""
        return self._aligner.report if self._aligner else None

    def start(self, task: str, start_time: float | None = None) -> None:
        """
        Open an episode.

        Raises:
            RuntimeError: When one is already open.
            ValueError: On an empty task.
        """
        if self._aligner is not None:
            raise RuntimeError('An episode is already being recorded; stop or discard it first.')
        if not task or not task.strip():
            raise ValueError('The task instruction is empty; set it before recording.')
        self._task = task.strip()
        self._aligner = FrameAligner({s.name: s.kind for s in self.streams}, self.config,
                                     start_time=start_time)

    def push(self, topic: str, time: float, msg: Any) -> None:
        """
        Decode a message of a recorded topic and add it (ignored while no episode is open).

        Raises:
            ValueError: When the message does not decode (the caller reports and goes on).
        """
        if self._aligner is None:
            return
        stream = self.by_topic[topic]
        stamp = messages.stamp_seconds(msg)
        self._aligner.push(stream.name, stamp if stamp is not None else time,
                           stream.decode(msg))

    def advance(self, now: float) -> int:
        """Write every frame the clock ``now`` has decided; return how many."""
        if self._aligner is None:
            return 0
        return self._write(self._aligner.pop_ready(now))

    def stop(self) -> tuple[SavedEpisode | None, Any]:
        """
        Close the episode: flush the aligner and save it, unless it dropped too much.

        Returns:
            (the saved episode, or None when it had no frame or too many drops, its report).
        """
        if self._aligner is None:
            raise RuntimeError('No episode is being recorded; start one first.')
        aligner, self._aligner = self._aligner, None
        self._closing = aligner.report
        self._write(aligner.flush())
        report = aligner.report
        episode, self._episode = self._episode, None
        if episode is None:
            _LOG.warning('Episode had no complete frame (%s); nothing saved.', report.summary())
            return None, report
        if report.invalid_frames:
            episode.discard()
            _LOG.warning('Episode discarded: %d frames could not be assembled (%s).',
                         report.invalid_frames, report.last_error)
            return None, report
        if report.drop_fraction > self.max_drop_fraction:
            episode.discard()
            _LOG.warning('Episode discarded: %.1f%% of its frames were dropped (max %.1f%%): %s',
                         100 * report.drop_fraction, 100 * self.max_drop_fraction,
                         report.summary())
            return None, report
        return episode.save(report.as_columns()), report

    def discard(self) -> None:
        """Drop the open episode, if any."""
        self._aligner = None
        if self._episode is not None:
            self._episode.discard()
            self._episode = None

    # ------------------------------------------------------------------------------ internals
    def _write(self, frames: Sequence[AlignedFrame]) -> int:
        for frame in frames:
            try:
                state, action, images = self.frame_arrays(frame.values)
            except ValueError as e:  # e.g. a joint missing from the joint states
                report = self._report_of_open()
                report.invalid_frames += 1
                report.last_error = str(e)
                continue
            if self._episode is None:
                if self._writer is None:
                    self._writer = DatasetWriter(self.root, self._spec(images))
                self._episode = self._writer.start_episode(self._task)
            self._episode.add_frame(state, action, images)
        return len(frames)

    def frame_arrays(self, values: Mapping[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Turn one aligned frame's stream values into (state, action, images)."""
        images, joints, command = {}, [], {}
        for stream in self.streams:
            value = values[stream.name]
            if stream.name.startswith('camera/'):
                images[stream.name[len('camera/'):]] = value
            elif stream.kind is StreamKind.HOLD:
                command.update(zip(*value))
            else:
                joints.append(value)
        state = self.adapter.state_from_joint_states(*merge_joint_states(joints))
        missing = [n for n in self.adapter.action_names if n not in command]
        if missing:
            raise ValueError(f'The command topics carry no value for {missing}; check the '
                             'commands of the robot config.')
        action = np.array([command[n] for n in self.adapter.action_names])
        return state, action, images

    def _report_of_open(self) -> Any:
        return self._aligner.report if self._aligner is not None else self._closing

    def _spec(self, images: Mapping[str, np.ndarray]) -> DatasetSpec:
        return DatasetSpec(fps=self.config.fps, robot_type=self.adapter.name,
                           state_names=self.adapter.state_names,
                           action_names=self.adapter.action_names,
                           cameras={k: v.shape[:2] for k, v in images.items()},
                           video_codec=self.video_codec)

    def _check_dataset(self, spec: DatasetSpec) -> None:
        cams = sorted(s.name[len('camera/'):] for s in self.streams
                      if s.name.startswith('camera/'))
        if (spec.fps != self.config.fps or tuple(spec.state_names) != self.adapter.state_names
                or tuple(spec.action_names) != self.adapter.action_names
                or sorted(spec.cameras) != cams):
            raise ValueError(
                f'{self.root} holds another recording setup (fps {spec.fps}, cameras '
                f'{sorted(spec.cameras)}, state {list(spec.state_names)}); this robot records '
                f'fps {self.config.fps}, cameras {cams}. Use a new dataset folder.')
