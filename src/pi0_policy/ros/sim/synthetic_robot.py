"""
A synthetic robot for tests and benchmarks: publishes cameras and joint states, records commands.

It reads the same robot config as the policy node (through the adapter), publishes random but
valid inputs built by ``adapter.make_example`` (images encoded once, restamped per message) and
records every command message with its arrival time (``time.monotonic``).
"""

from collections.abc import Callable
from dataclasses import dataclass
import threading
import time
from typing import Any

from embodiment_adapters.config import CommandType
from nav_msgs.msg import Odometry
import numpy as np
from pi0_policy.ros import conversions
from pi0_policy.ros.commands import MESSAGE_TYPES
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

DEPTH = 10
# Default publishing rates (Hz) of the synthetic cameras and joint states.
CAMERA_RATE_HZ = 30.0
JOINT_RATE_HZ = 50.0


@dataclass
class Received:
    """One recorded message and its arrival time (time.monotonic seconds)."""

    time: float
    message: Any


class SyntheticRobot(Node):
    """Publish a robot's inputs and record the commands it receives."""

    def __init__(self, adapter: Any, *, name: str = 'synthetic_robot',
                 camera_rate_hz: float = CAMERA_RATE_HZ, joint_rate_hz: float = JOINT_RATE_HZ,
                 image_hw: tuple[int, int] | None = (48, 64), seed: int = 0,
                 odom_topic: str = '/odom') -> None:
        """
        Create the publishers, timers and command recorders.

        Args:
            adapter: The embodiment adapter of the robot config the policy node uses.
            name: Node name.
            camera_rate_hz: Rate of every camera.
            joint_rate_hz: Rate of the joint states (and odometry).
            image_hw: Image size (rows, columns); None uses each camera's configured size.
            seed: Seed of the random example.
            odom_topic: Odometry topic (used when the base is in the state).

        """
        super().__init__(name)
        self._adapter = adapter
        example = adapter.make_example(np.random.default_rng(seed), image_hw=image_hw)
        self.positions = dict(zip(example['names'], example['positions']))
        self.cameras_on = {cam.name: True for cam in adapter.cameras}
        self.camera_times: dict[str, float] = {}
        self.images: dict[str, Any] = {}
        self._camera_pubs = {}
        for cam in adapter.cameras:
            rgb = example['images'][cam.name]
            msg = (conversions.rgb_to_compressed(rgb) if cam.compressed
                   else conversions.rgb_to_image(rgb, encoding='bgr8'))
            self.images[cam.name] = msg
            self._camera_pubs[cam.name] = self.create_publisher(
                type(msg), cam.topic, qos_profile_sensor_data)
        self._joint_pubs = {t.topic: self.create_publisher(JointState, t.topic, DEPTH)
                            for t in adapter.joint_state_topics}
        self._odom_pub = (self.create_publisher(Odometry, odom_topic, DEPTH)
                          if adapter.config.base_in_state else None)
        self.commands: dict[str, list[Received]] = {c.topic: [] for c in adapter.commands}
        self._lock = threading.Lock()
        for spec in adapter.commands:
            self.create_subscription(MESSAGE_TYPES[CommandType(spec.type)], spec.topic,
                                     self._recorder(self.commands[spec.topic]), DEPTH)
        self.joint_override: Callable[[str, JointState], JointState | None] | None = None
        self.create_timer(1.0 / camera_rate_hz, self._publish_cameras)
        self.create_timer(1.0 / joint_rate_hz, self._publish_joints)

    def _recorder(self, store: list[Received]) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            with self._lock:
                store.append(Received(time.monotonic(), msg))
        return record

    def record(self, msg_type: type, topic: str, qos: Any = DEPTH) -> list[Received]:
        """Subscribe to ``topic`` and return the list its messages are appended to."""
        store: list[Received] = []
        self.create_subscription(msg_type, topic, self._recorder(store), qos)
        return store

    def _publish_cameras(self) -> None:
        stamp = self.get_clock().now().to_msg()
        for name, publisher in self._camera_pubs.items():
            if self.cameras_on[name]:
                msg = self.images[name]
                msg.header.stamp = stamp
                publisher.publish(msg)
                self.camera_times[name] = time.monotonic()

    def _publish_joints(self) -> None:
        stamp = self.get_clock().now().to_msg()
        split = self._adapter.split_joint_states(list(self.positions),
                                                 list(self.positions.values()))
        for topic, (names, positions) in split.items():
            msg = JointState(name=names, position=positions)
            msg.header.stamp = stamp
            if self.joint_override is not None:
                msg = self.joint_override(topic, msg)  # None: this message is not sent
            if msg is not None:
                self._joint_pubs[topic].publish(msg)
        if self._odom_pub is not None:
            odom = Odometry()
            odom.header.stamp = stamp
            self._odom_pub.publish(odom)

    def received(self, topic: str, since: float = 0.0) -> list[Received]:
        """Return the commands received on ``topic`` after ``since`` (monotonic seconds)."""
        with self._lock:
            return [r for r in self.commands[topic] if r.time >= since]
