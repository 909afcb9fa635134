"""
What the policy node publishes per configure: commands, action chunks and their rviz preview.

``NodeOutputs`` creates the lifecycle publishers of one configured robot (they publish only while
the node is active), turns a (D,) command into the robot's command messages and a policy result
into an ``ActionChunk`` plus ghosts and markers, and destroys its publishers at cleanup. The
publishers get no QoS-event handlers: rclpy adds those to the executor as waitables, and
destroying them while the executor runs raises InvalidHandle inside the executor (an rclpy race).
"""

from embodiment_adapters import EmbodimentAdapter, unified
import numpy as np
from pi0_msgs.msg import ActionChunk
from pi0_policy.ros import conversions, visualization
from pi0_policy.ros.commands import CommandRouter
from pi0_policy.runtime.config import ReportingConfig
from pi0_policy.runtime.policy import PolicyResult
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher
from sensor_msgs.msg import JointState
from visualization_msgs.msg import MarkerArray

DEPTH = 10  # queue depth of reliable topics
NO_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)


class NodeOutputs:
    """The lifecycle publishers of one configured robot and the messages they carry."""

    def __init__(self, node: LifecycleNode, adapter: EmbodimentAdapter, router: CommandRouter,
                 control_period: float) -> None:
        """Create the publishers of ``router``'s commands, the chunk and its preview."""
        self._node, self._adapter, self.router = node, adapter, router
        self._dt = control_period
        self._ghosts = visualization.ghost_groups(adapter)
        self._commands = [self._publisher(t, s.topic)
                          for t, s in zip(router.message_types, router.specs)]
        self._chunk = self._publisher(ActionChunk, '~/action_chunk')
        self._ghost_pubs = [self._publisher(JointState, g.topic) for g in self._ghosts]
        self._markers = self._publisher(MarkerArray, '~/preview/markers')

    def _publisher(self, msg_type: type, topic: str) -> LifecyclePublisher:
        return self._node.create_lifecycle_publisher(msg_type, topic, DEPTH,
                                                     event_callbacks=NO_EVENTS)

    @property
    def command_publishers(self) -> list[LifecyclePublisher]:
        """Return the command publishers, in the router's order."""
        return list(self._commands)

    def command(self, command: np.ndarray | None, stamp) -> None:
        """Publish one (D,) command stamped ``stamp`` (None: only a zero base velocity)."""
        for publisher, msg in zip(self._commands, self.router.messages(command, stamp)):
            if msg is not None:
                publisher.publish(msg)

    def chunk(self, result: PolicyResult, *, obs_time: float, now: float, instruction: str,
              sequence: int, reporting: ReportingConfig) -> None:
        """Publish one chunk, stamped with its observation time, and its preview if asked."""
        a, stamp = self._adapter, conversions.to_time(obs_time)
        self._chunk.publish(conversions.action_chunk(
            stamp=stamp, embodiment=a.name, sequence=sequence, instruction=instruction,
            control_period=self._dt, joint_names=a.action_names, actions=result.actions,
            unified_names=unified.UNIFIED_NAMES, unified_actions=result.unified_actions,
            inference_latency=now - obs_time))  # observation -> chunk, as documented
        if reporting.preview:
            ghosts, markers = visualization.chunk_preview(
                a, self._ghosts, result.actions, control_period=self._dt, stamp=stamp,
                frame_id=reporting.preview_frame)
            for publisher, ghost in zip(self._ghost_pubs, ghosts):
                publisher.publish(ghost)
            self._markers.publish(markers)

    def destroy(self) -> None:
        """Destroy every publisher (the node must not publish through them afterwards)."""
        for publisher in [*self._commands, self._chunk, *self._ghost_pubs, self._markers]:
            self._node.destroy_lifecycle_publisher(publisher)
        self._commands, self._ghost_pubs = [], []
