"""
``pi0_recorder``: record a robot's topics into LeRobotDataset episodes, driven by its robot YAML.

Subscribes to the robot config's cameras, joint-state topics and command topics (the action
actually commanded: a teleoperation leader, a scripted controller or a policy) and writes aligned
frames through ``pi0_policy.data.recording`` (all recording logic is there, without ROS).

Services (std_srvs/Trigger): ``~/start`` opens an episode with the ``task`` parameter,
``~/stop`` saves it (the response reports frames, dropped and late counts; an episode with more
than ``max_drop_fraction`` dropped frames is refused), ``~/discard`` drops it. Ctrl-C or a crash
loses at most the open episode.
"""

from __future__ import annotations

from typing import Any

import embodiment_adapters
from embodiment_adapters.config import CommandType
from pi0_policy.data.alignment import AlignmentConfig
from pi0_policy.data.recording import (COMMAND_TYPES, COMPRESSED_IMAGE, IMAGE, JOINT_STATE,
                                       RecordingSession)
from pi0_policy.data.video import SUPPORTED_ENCODERS
from pi0_policy.ros.commands import MESSAGE_TYPES
from pi0_policy.ros.params import ParamSpec
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger

NODE_NAME = 'pi0_recorder'
QOS_DEPTH = 50
NANOSECONDS = 1e9
# Message class of each stream type name of ``pi0_policy.data.recording``.
MESSAGE_CLASSES = {IMAGE: Image, COMPRESSED_IMAGE: CompressedImage, JOINT_STATE: JointState,
                   **{COMMAND_TYPES[t.value]: MESSAGE_TYPES[t] for t in CommandType}}

RECORDER_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec('robot', 'aloha', 'Robot config name or YAML path: cameras, joint-state and '
              'command topics come from it.', read_only=True),
    ParamSpec('dataset_dir', '', 'LeRobot dataset folder to create or extend (required).',
              read_only=True),
    ParamSpec('task', '', 'Task instruction stored with the next episodes (may change between '
              'episodes).'),
    ParamSpec('fps', 0, 'Frame rate of the dataset (Hz); 0 uses the robot control_rate_hz.',
              range=(0, 1000), read_only=True),
    ParamSpec('tolerance_s', 0.0, 'Largest |message time - frame time| (s); 0 uses half a '
              'period (the largest allowed).', range=(0.0, 1.0), read_only=True),
    ParamSpec('latency_s', 0.1, 'Wait for messages in transit before a frame is decided (s).',
              range=(0.0, 5.0), read_only=True),
    ParamSpec('hold_timeout_s', 1.0, 'Oldest command still in effect (s).', range=(0.001, 60.0),
              read_only=True),
    ParamSpec('cameras', '', 'Comma-separated cameras to record; empty: those feeding the '
              'model.', read_only=True),
    ParamSpec('video_codec', 'libx264', 'Video encoder.', choices=SUPPORTED_ENCODERS,
              read_only=True),
    ParamSpec('max_drop_fraction', 0.1, 'Refuse an episode with a larger share of dropped '
              'frames.', range=(0.0, 1.0), read_only=True),
)


class RecorderNode(Node):
    """Subscribe to a robot's topics and record episodes on request."""

    def __init__(self, **kwargs: Any) -> None:
        """
        Declare the parameters, open the dataset and subscribe (see the module docstring).

        Raises:
            ValueError: On a bad robot config, dataset folder or parameter.
        """
        super().__init__(NODE_NAME, **kwargs)
        for spec in RECORDER_PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        v = {spec.name: self.get_parameter(spec.name).value for spec in RECORDER_PARAMETERS}
        if not v['dataset_dir']:
            raise ValueError("Parameter 'dataset_dir' is empty; set the dataset folder.")
        adapter = embodiment_adapters.load_adapter(v['robot'])
        config = AlignmentConfig(
            fps=int(v['fps']) or int(round(adapter.config.control_rate_hz)),
            tolerance_s=v['tolerance_s'] or None, latency_s=v['latency_s'],
            hold_timeout_s=v['hold_timeout_s'])
        cameras = [c.strip() for c in v['cameras'].split(',') if c.strip()] or None
        self.session = RecordingSession(v['dataset_dir'], adapter, config, cameras=cameras,
                                        video_codec=v['video_codec'],
                                        max_drop_fraction=v['max_drop_fraction'])
        self.task = v['task'].strip()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for stream in self.session.streams:
            msg_type = MESSAGE_CLASSES[stream.msg_type]
            qos = qos_profile_sensor_data if msg_type in (Image, CompressedImage) else QOS_DEPTH
            self.create_subscription(msg_type, stream.topic, self._on_message(stream.topic), qos)
        self.create_service(Trigger, '~/start', self._on_start)
        self.create_service(Trigger, '~/stop', self._on_stop)
        self.create_service(Trigger, '~/discard', self._on_discard)
        self.create_timer(1.0 / config.fps, self._on_tick)
        self.get_logger().info(
            f'Recording {adapter.name} at {config.fps} Hz (tolerance {config.tolerance_s:.3f} s) '
            f'into {v["dataset_dir"]} ({self.session.num_episodes} episodes so far); call '
            f'~/start and ~/stop.')

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / NANOSECONDS

    def _on_message(self, topic: str) -> Any:
        def callback(msg: Any) -> None:
            try:
                self.session.push(topic, self._now(), msg)
            except ValueError as e:
                self.get_logger().warning(f'{topic}: message skipped: {e}',
                                          throttle_duration_sec=5.0)
        return callback

    def _on_tick(self) -> None:
        self.session.advance(self._now())

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == 'task':
                if not str(param.value).strip():
                    return SetParametersResult(
                        successful=False, reason="Parameter 'task' must not be empty.")
                self.task = str(param.value).strip()
        return SetParametersResult(successful=True)

    def _on_start(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            self.session.start(self.task, start_time=self._now())
            response.success, response.message = True, f'Recording: {self.task!r}.'
        except (RuntimeError, ValueError) as e:
            response.success, response.message = False, str(e)
        return response

    def _on_stop(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            saved, report = self.session.stop()
        except (RuntimeError, ValueError) as e:
            response.success, response.message = False, str(e)
            return response
        response.success = saved is not None
        where = f'episode {saved.index} saved' if saved else 'episode NOT saved'
        response.message = f'{where}: {report.summary()}'
        self.get_logger().info(response.message)
        return response

    def _on_discard(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = self.session.recording
        self.session.discard()
        response.success = True
        response.message = 'Episode discarded.' if was else 'No episode was open.'
        return response


def main(args: list[str] | None = None) -> None:
    """Run the recorder until Ctrl-C (an open episode is discarded)."""
    rclpy.init(args=args)
    node = None
    try:
        node = RecorderNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.session.discard()
            node.destroy_node()
        rclpy.try_shutdown()
