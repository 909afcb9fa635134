"""
The pi0 policy as a managed (lifecycle) ROS 2 node: cameras + joint states in, commands out.

Transitions: configure reads the parameters once, loads the robot config and the policy and
warms it up (a bad config gives FAILURE with the reason logged, and everything configure had
created is released); activate starts the control loop and the inference thread; deactivate
stops them, then a node that was commanding holds its last command while a disabled one sends
no position command (bases get a zero twist either way); cleanup frees the model. Commands flow
only while enabled (``~/enable``).

Threads: the control loop (``ControlLoop``) has its own thread and only takes the next action
from the chunk executor, filters it and publishes (a tick that raises gives a hold and the ERROR
state; the loop keeps running); subscriptions, services and reporting share one callback group;
inference runs in ``InferenceWorker``'s thread. The tick and inference logic is ``Session``'s,
the status bookkeeping ``StatusReporter``'s (both pure, in runtime/); this node wires
them to ROS.

Shutdown (Ctrl-C, SIGTERM, or the shutdown transition): ``close()`` stops the control timer, waits
for a tick in progress, joins the inference thread (a thread still running torch at interpreter
exit aborts the process) and sends a final hold only while the ROS context can still deliver it.
rclpy's signal handler shuts the context down before ``main`` regains control, so after Ctrl-C no
final command is sent: joint controllers keep their last (safe) target and a base stops at its
command timeout.
"""

from dataclasses import replace
import sys
import threading
import traceback

from diagnostic_msgs.msg import DiagnosticArray
from embodiment_adapters import load_robot_config, make_adapter, unified
from pi0_msgs.msg import ActionChunk, PolicyStatus
from pi0_msgs.srv import SetInstruction
from pi0_policy.ros import conversions, diagnostics, params, visualization
from pi0_policy.ros.commands import CommandRouter
from pi0_policy.ros.control_loop import ControlLoop
from pi0_policy.ros.observation import (
    check_message, check_topics, decode_image, MESSAGE_TYPES)
from pi0_policy.ros.worker import InferenceWorker
from pi0_policy.runtime.chunking import make_executor
from pi0_policy.runtime.config import NodeConfig
from pi0_policy.runtime.inputs import (
    input_specs, InputError, InputSpec, ObservationBuffer, required_names)
from pi0_policy.runtime.safety import SafetyConfig, SafetyFilter
from pi0_policy.runtime.session import Session
from pi0_policy.runtime.status import NodeState, StatusReporter, StatusSnapshot
from pi0_policy.serving.backends import load_backend
from pi0_policy.serving.client import PolicyBackend
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import NameValidationException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import (
    LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn)
from rclpy.logging import get_logger
from rclpy.publisher import Publisher
from rclpy.qos import qos_profile_sensor_data
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool
import torch
from visualization_msgs.msg import MarkerArray

NODE_NAME = 'pi0_policy_node'
DEPTH = 10  # queue depth of reliable topics
# Executor threads: inputs/services/reporting and lifecycle services (control has its own thread).
EXECUTOR_THREADS = 3
GIL_SWITCH_INTERVAL = 0.0005  # seconds
SHUTDOWN_LOGGER = f'{NODE_NAME}.shutdown'  # console-only logger used once ROS is shut down
LOG_PERIOD_S = 1.0  # seconds between repeated warnings of one kind
# Errors of a bad configuration (parameters, robot YAML, checkpoint, device): configure FAILURE.
CONFIGURE_ERRORS = (ValueError, TypeError, OSError, RuntimeError, NameValidationException)
# How configure's entities are destroyed; LifecyclePublisher first (it is also a Publisher).
_DESTROY = ((LifecyclePublisher, 'destroy_lifecycle_publisher'),
            (Publisher, 'destroy_publisher'), (Subscription, 'destroy_subscription'),
            (Service, 'destroy_service'), (Timer, 'destroy_timer'))


class PolicyNode(LifecycleNode):
    """Run π0 on one robot; see the module docstring for the transitions and threads."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters; configure/activate at once when ``autostart`` is set."""
        super().__init__(NODE_NAME, **kwargs)
        params.declare_parameters(self)
        # Created by configure, released by cleanup (the controller and status are kept).
        self._config: NodeConfig | None = None
        self._policy: PolicyBackend | None = None
        self._router: CommandRouter | None = None
        self._inputs: tuple[InputSpec, ...] = ()
        self._ghosts: tuple[visualization.GhostGroup, ...] = ()
        self._ctl: Session | None = None
        self._status: StatusReporter | None = None
        self._command_pubs: list[LifecyclePublisher] = []
        self._ghost_pubs: list[LifecyclePublisher] = []
        self._chunk_pub: LifecyclePublisher | None = None
        self._marker_pub: LifecyclePublisher | None = None
        self._status_pub: Publisher | None = None
        self._diag_pub: Publisher | None = None
        self._entities: list = []  # subscriptions, publishers, services, timers of configure
        # Created by activate, stopped by deactivate.
        self._worker: InferenceWorker | None = None
        self._control_timer: ControlLoop | None = None
        # Held by a control tick; close() takes it to wait for a tick that is still running.
        self._tick_lock = threading.Lock()
        if self.get_parameter('autostart').value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ----- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load robot + policy, warm up, create I/O; FAILURE (reason logged) on a bad config."""
        try:
            self._configure()
        except CONFIGURE_ERRORS as error:
            self._release()  # no model, no half-created I/O: a later configure starts clean
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        except BaseException:
            self._release()
            self.get_logger().error(f'configure failed:\n{traceback.format_exc()}')
            raise  # rclpy turns it into ERROR
        self.get_logger().info(
            f"configured robot '{self._ctl.adapter.name}' ({self._ctl.adapter.dof} dims, "
            f'{len(self._inputs)} inputs) with '
            f"{self._config.policy.checkpoint or 'a tiny random model'}")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        """Do configure's work; raises on a bad configuration (the caller releases)."""
        cfg = params.read_node_config(self)
        torch.set_num_threads(cfg.policy.torch_threads)
        adapter = make_adapter(load_robot_config(cfg.robot))
        inputs = input_specs(adapter, cfg.odom_topic)
        check_topics(adapter, inputs, node_name=self.get_name(), namespace=self.get_namespace())
        router = CommandRouter(adapter.commands, adapter.action_names, adapter.config.base,
                               control_period=cfg.execution.dt, base_frame_id=cfg.base_frame_id)
        self._policy = load_backend(cfg.policy, adapter, robot=cfg.robot,
                                    on_disconnect=self._on_policy_lost)
        self._policy.warmup()
        # Ticks run at the node's control rate; the chunk's actions are spaced at the rate of the
        # robot's data (its config), which the executor interpolates.
        execution = replace(cfg.execution, horizon=self._policy.action_horizon,
                            chunk_rate_hz=adapter.config.control_rate_hz)
        executor = make_executor(execution)
        safety = SafetyFilter(SafetyConfig(
            lower=adapter.lower, upper=adapter.upper, is_velocity=adapter.is_velocity,
            max_velocity=adapter.max_velocity * cfg.velocity_scale, dt=execution.dt,
            names=adapter.action_names))
        buffer = ObservationBuffer([s.name for s in inputs], cfg.max_age,
                                   required_names(adapter, inputs))
        self._config, self._router, self._inputs = cfg, router, inputs
        self._ghosts = visualization.ghost_groups(adapter)
        self._status = StatusReporter(adapter.name, executor, buffer, safety, max_age=cfg.max_age,
                                      latency_window=cfg.reporting.latency_window)
        self._ctl = Session(
            adapter, inputs, buffer, self._policy, executor, safety, self._status,
            max_age=cfg.max_age, instruction=cfg.prompt, enabled=cfg.enabled_at_start,
            clock=self._now, decode=decode_image, publish=self._publish,
            publish_chunk=self._publish_chunk, on_state_change=self._publish_status,
            inference_delay_s=cfg.policy.inference_delay_s)
        self._create_io(cfg)

    def _keep(self, entity):
        """Record an entity of configure (destroyed by cleanup or a failed configure)."""
        self._entities.append(entity)
        return entity

    def _create_io(self, cfg: NodeConfig) -> None:
        """Create subscriptions, publishers, services and reporting timers."""
        io, keep = MutuallyExclusiveCallbackGroup(), self._keep
        for spec in self._inputs:
            keep(self.create_subscription(
                MESSAGE_TYPES[spec.kind], spec.topic,
                lambda msg, spec=spec: self._on_input(spec, msg), qos_profile_sensor_data,
                callback_group=io))
        self._command_pubs = [keep(self.create_lifecycle_publisher(t, s.topic, DEPTH))
                              for t, s in zip(self._router.message_types, self._router.specs)]
        self._chunk_pub = keep(self.create_lifecycle_publisher(ActionChunk, '~/action_chunk',
                                                               DEPTH))
        self._ghost_pubs = [keep(self.create_lifecycle_publisher(JointState, g.topic, DEPTH))
                            for g in self._ghosts]
        self._marker_pub = keep(self.create_lifecycle_publisher(MarkerArray, '~/preview/markers',
                                                                DEPTH))
        self._status_pub = keep(self.create_publisher(PolicyStatus, '~/status', DEPTH))
        self._diag_pub = keep(self.create_publisher(DiagnosticArray, '/diagnostics', DEPTH))
        keep(self.create_subscription(String, '~/instruction', self._on_instruction, DEPTH,
                                      callback_group=io))
        keep(self.create_service(SetInstruction, '~/set_instruction', self._on_set_instruction,
                                 callback_group=io))
        keep(self.create_service(SetBool, '~/enable', self._on_enable, callback_group=io))
        keep(self.create_timer(1.0 / cfg.reporting.status_rate_hz, self._publish_status,
                               callback_group=io))
        keep(self.create_timer(1.0 / cfg.reporting.diagnostics_rate_hz,
                               self._publish_diagnostics, callback_group=io))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, then start the inference thread and the control loop."""
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._worker = InferenceWorker(self._ctl.infer_once, self._on_inference_error,
                                       niceness=self._config.policy.inference_niceness)
        self._ctl.activate(self._worker.wake)
        self._worker.start()
        self._control_timer = ControlLoop(self.get_clock(), self._ctl.executor.config.dt,
                                          self._on_control_tick, on_error=self._on_tick_error,
                                          priority=self._config.control_priority)
        self._control_timer.start()
        self._ctl.set_state(NodeState.WAITING if self._ctl.enabled else NodeState.DISABLED, '')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop commanding: stop the loop, join the inference thread, hold (zero base)."""
        self._stop_control()
        self._ctl.set_state(NodeState.INACTIVE, '')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the I/O and release the model (GPU memory too)."""
        self._release()
        self._status.state = NodeState.UNCONFIGURED
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop commanding and release everything."""
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """
        Stop commanding, join the inference thread and free the model.

        Idempotent, and safe after the ROS context was shut down (Ctrl-C): the final hold is
        then skipped and logged instead of raising.
        """
        self._stop_control()
        self._release()

    def _stop_control(self) -> None:
        """Stop the control loop, join the worker, then send the final command."""
        with self._tick_lock:  # a tick in progress finishes first; later ticks see no timer
            timer, self._control_timer = self._control_timer, None
        if timer is not None:
            timer.stop()
        if self._worker is not None:
            self._worker.stop()  # joins the thread; waits for an inference in progress
            self._worker = None
        if self._ctl is not None:
            self._ctl.in_flight = False  # a wake the stopped worker never served
        if timer is not None:
            self._final_hold()

    def _final_hold(self) -> None:
        """
        Send the last command if the ROS context can still deliver it; never raise.

        Commands flow only while enabled: a node that was commanding holds its last command;
        otherwise (disabled, or nothing commanded yet) only bases get a zero velocity.
        """
        # Not the node's logger: it would also try to publish to /rosout, which is gone.
        logger = get_logger(SHUTDOWN_LOGGER)
        if not self.context.ok():
            logger.info('ROS is shut down: no final hold command sent (controllers keep the '
                        'last command).')
            return
        try:
            self._publish(self._ctl.final_command())
        except _rclpy.RCLError as error:  # the context was shut down after the check above
            logger.info(f'final hold command not sent: {error}')
        self._ctl.commanded = False

    def _release(self) -> None:
        """Destroy configure's entities and close the policy."""
        for entity in reversed(self._entities):
            method = next(name for kind, name in _DESTROY if isinstance(entity, kind))
            getattr(self, method)(entity)
        self._entities, self._command_pubs, self._ghost_pubs = [], [], []
        self._chunk_pub = self._marker_pub = self._status_pub = self._diag_pub = None
        if self._policy is not None:
            self._policy.close()
            self._policy = None

    # ----- inputs --------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / conversions.NANOSECONDS

    def _on_input(self, spec, msg) -> None:
        """Validate and store the newest message of one input (header stamp, else arrival)."""
        stamp = getattr(getattr(msg, 'header', None), 'stamp', None)
        stamp = conversions.to_seconds(stamp) if stamp and (stamp.sec or stamp.nanosec) else 0.0
        try:
            self._ctl.buffer.put(spec.name, check_message(spec, msg), stamp or self._now())
        except InputError as error:
            self._ctl.buffer.reject(spec.name, error.reason)
            self._report_error(str(error))

    def _accept_instruction(self, text: str) -> tuple[bool, str]:
        try:
            self._ctl.instruction = conversions.clean_instruction(
                text, self._config.max_instruction_chars)
        except ValueError as error:
            self._report_error(f'instruction rejected: {error}')
            return False, str(error)
        return True, ''

    def _on_instruction(self, msg: String) -> None:
        self._accept_instruction(msg.data)

    def _on_set_instruction(self, request, response):
        response.previous_instruction = self._ctl.instruction
        response.success, response.message = self._accept_instruction(request.instruction)
        return response

    def _on_enable(self, request, response):
        self._ctl.set_enabled(request.data)
        response.success, response.message = True, f'enabled={request.data}'
        return response

    def _report_error(self, text: str) -> None:
        self._status.last_error = text
        self.get_logger().warning(text, throttle_duration_sec=LOG_PERIOD_S)

    # ----- outputs: inference (worker thread), control (loop thread), reporting -------------
    def _on_inference_error(self, error: Exception) -> None:
        self._report_error(self._ctl.inference_failed(error))

    def _on_policy_lost(self, reason: str) -> None:
        """Drop the plan at once when the policy server's connection drops (client thread)."""
        if self._ctl is not None:
            self._report_error(self._ctl.inference_failed(ConnectionError(reason)))

    def _publish_chunk(self, result, obs_time: float, instruction: str, sequence: int) -> None:
        if not self.context.ok():  # shutting down: the chunk is no longer delivered
            return
        a, dt = self._ctl.adapter, self._ctl.executor.config.dt
        stamp = conversions.to_time(obs_time)
        self._chunk_pub.publish(conversions.action_chunk(
            stamp=stamp, embodiment=a.name, sequence=sequence, instruction=instruction,
            control_period=dt, joint_names=a.action_names, actions=result.actions,
            unified_names=unified.UNIFIED_NAMES,
            unified_actions=result.unified_actions,
            inference_latency=self._now() - obs_time))  # observation -> chunk, as documented
        if self._config.reporting.preview:
            ghosts, markers = visualization.chunk_preview(
                a, self._ghosts, result.actions, control_period=dt, stamp=stamp,
                frame_id=self._config.reporting.preview_frame)
            for publisher, ghost in zip(self._ghost_pubs, ghosts):
                publisher.publish(ghost)
            self._marker_pub.publish(markers)

    def _on_control_tick(self) -> None:
        """Run one control tick unless control was stopped while this callback waited."""
        with self._tick_lock:
            if self._control_timer is not None:
                self._ctl.tick()

    def _on_tick_error(self, error: Exception) -> None:
        """Hold and report ERROR after a tick raised (the loop logged it and keeps running)."""
        with self._tick_lock:
            if self._control_timer is not None:
                self._ctl.tick_failed(error)

    def _publish(self, command) -> None:
        if not self.context.ok():  # a tick that raced with Ctrl-C: nothing can be delivered
            return
        stamp = self.get_clock().now().to_msg()
        for publisher, msg in zip(self._command_pubs, self._router.messages(command, stamp)):
            if msg is not None:
                publisher.publish(msg)

    def _snapshot(self) -> StatusSnapshot:
        return self._status.snapshot(self._now(), instruction=self._ctl.instruction,
                                     enabled=self._ctl.enabled,
                                     running=self._control_timer is not None)

    def _publish_status(self) -> None:
        self._status_pub.publish(diagnostics.policy_status(
            self._snapshot(), self.get_clock().now().to_msg()))

    def _publish_diagnostics(self) -> None:
        array = diagnostics.diagnostic_array(
            self._snapshot(), self.get_clock().now().to_msg(), self.get_fully_qualified_name())
        health = getattr(self._policy, 'health', None)  # subprocess/remote backends only
        if health is not None:
            array.status.append(diagnostics.backend_status(health(),
                                                           self.get_fully_qualified_name()))
        self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    """Run the node until Ctrl-C or an external shutdown (``ros2 run pi0_policy ...``)."""
    # Hand the GIL over every millisecond (default 5 ms) so that the control timer waits less
    # for the inference thread.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    rclpy.init(args=args)
    node = None
    try:
        node = PolicyNode()
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM: rclpy has shut the context down already
    finally:
        if node is not None:
            node.close()  # stops the timer and joins the inference thread before exit
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
