"""
The pi0 policy as a managed (lifecycle) ROS 2 node: cameras + joint states in, commands out.

Transitions: configure reads the parameters once, loads the robot config and the policy and
warms it up (a bad config gives FAILURE; the reason is logged and reported on ``~/status`` and
``/diagnostics``, and everything configure had created is released); activate starts the control
loop and the inference thread; deactivate stops them, then a node that was commanding holds its
last command while a disabled one sends no position command (bases ramp to a zero twist either
way); cleanup frees the model. Commands flow only while enabled (``~/enable``). A change_state
request for a transition invalid in the current state is answered with failure (``lifecycle``).

Parameters (``params``): read-only ones are fixed at start-up, configure-time ones can be set
only while unconfigured, live ones are validated when set and applied at once.

Threads: the control loop (``ControlLoop``) has its own thread and only takes the next action from
the chunk executor, filters it and publishes (a tick that raises gives a hold and the ERROR state;
the loop keeps running); subscriptions, services and reporting share one callback group and take
``_io_lock``, under which configure's publishers are destroyed (no callback runs on a destroyed
publisher; the input subscriptions live as long as the node); inference runs in
``InferenceWorker``'s thread. The tick and inference logic is ``Session``'s, the status bookkeeping
``StatusReporter``'s (both pure, in runtime/); this node wires them to ROS. Reporting
(``~/status``, ``/diagnostics``, ``~/enable``, ``~/set_instruction``) lives as long as the node, so
a failed configure is still reported.

Shutdown (Ctrl-C, SIGTERM, or the shutdown transition): ``close()`` stops the control loop, waits
for a tick in progress, joins the inference thread (a thread still running torch at interpreter
exit aborts the process) and sends the final commands: the held positions while the base ramps
down within its acceleration limits, then a zero base velocity. ``main`` installs its own signal
handlers, so this happens before the ROS context goes away.
"""

import sys
import threading
import time
import traceback

from diagnostic_msgs.msg import DiagnosticArray
from embodiment_adapters import load_robot_config, make_adapter
import numpy as np
from pi0_msgs.msg import PolicyStatus
from pi0_msgs.srv import SetInstruction
from pi0_policy.ros import conversions, diagnostics, lifecycle, params
from pi0_policy.ros.commands import CommandRouter
from pi0_policy.ros.control_loop import ControlLoop
from pi0_policy.ros.observation import (
    check_message, check_topics, decode_image, MESSAGE_TYPES)
from pi0_policy.ros.outputs import NodeOutputs
from pi0_policy.ros.process import exit_with_parent_if_asked
from pi0_policy.ros.worker import InferenceWorker
from pi0_policy.runtime.config import NodeConfig
from pi0_policy.runtime.inputs import CLOCK_SKEW_WARN_S, input_specs, InputError, InputSpec
from pi0_policy.runtime.session import build_session, Session
from pi0_policy.runtime.status import NodeState, StatusReporter, StatusSnapshot
from pi0_policy.serving.backends import load_backend
from pi0_policy.serving.client import PolicyBackend
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import NameValidationException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
import torch

NODE_NAME = 'pi0_policy_node'
DEPTH = 10  # queue depth of reliable topics
# Executor threads: inputs/services/reporting and lifecycle services (control has its own thread).
EXECUTOR_THREADS = 3
GIL_SWITCH_INTERVAL = 0.0005  # seconds
SHUTDOWN_LOGGER = f'{NODE_NAME}.shutdown'  # console-only logger used once ROS is shut down
LOG_PERIOD_S = 1.0  # seconds between repeated warnings of one kind
NANOSECONDS = 1_000_000_000
# Errors of a bad configuration (parameters, robot YAML, checkpoint, device): configure FAILURE.
CONFIGURE_ERRORS = (ValueError, TypeError, OSError, RuntimeError, NameValidationException)
# Longest base ramp-down sent at shutdown before the final zero velocity (seconds).
STOP_RAMP_MAX_S = 2.0
# Configure's subscriptions get no QoS-event handlers: rclpy adds those to the executor as
# waitables, and destroying them at cleanup while the executor runs raises InvalidHandle inside
# the executor (an rclpy race; NodeOutputs does the same for its publishers).
_NO_SUB_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)


class PolicyNode(LifecycleNode):
    """Run π0 on one robot; see the module docstring for the transitions and threads."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters and reporting; configure/activate at once with ``autostart``."""
        super().__init__(NODE_NAME, **kwargs)
        params.declare_parameters(self)
        lifecycle.guard_change_state(self)
        # Created by configure, released by cleanup.
        self._config: NodeConfig | None = None
        self._policy: PolicyBackend | None = None
        self._inputs: tuple[InputSpec, ...] = ()
        self._ctl: Session | None = None
        self._status: StatusReporter | None = None
        self._outputs: NodeOutputs | None = None  # commands, chunks, preview
        self._input_subs: list[Subscription] = []  # the robot's inputs (``_subscribe_inputs``)
        self._input_specs: tuple[InputSpec, ...] = ()  # what they subscribe to
        # Created by activate, stopped by deactivate.
        self._worker: InferenceWorker | None = None
        self._control_timer: ControlLoop | None = None
        # Held by a control tick; close() takes it to wait for a tick that is still running.
        self._tick_lock = threading.Lock()
        # Held by every I/O callback and while configure's I/O is created or destroyed.
        self._io_lock = threading.RLock()
        self._failure = ''  # why the last configure failed ('' after a success)
        self._create_reporting()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        if self.get_parameter('autostart').value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    def _create_reporting(self) -> None:
        """Create the I/O that lives as long as the node: status, diagnostics, services."""
        io = self._io_group = MutuallyExclusiveCallbackGroup()
        self._status_pub = self.create_publisher(PolicyStatus, '~/status', DEPTH)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', DEPTH)
        self.create_subscription(String, '~/instruction', self._on_instruction, DEPTH,
                                 callback_group=io)
        self.create_service(SetInstruction, '~/set_instruction', self._on_set_instruction,
                            callback_group=io)
        self.create_service(SetBool, '~/enable', self._on_enable, callback_group=io)
        self.create_service(Trigger, '~/move_to_start', self._on_move_to_start,
                            callback_group=io)
        rates = {name: self.get_parameter(name).value
                 for name in ('status_rate_hz', 'diagnostics_rate_hz')}
        self._status_timer = self.create_timer(1.0 / rates['status_rate_hz'],
                                               self._publish_status, callback_group=io)
        self._diag_timer = self.create_timer(1.0 / rates['diagnostics_rate_hz'],
                                             self._publish_diagnostics, callback_group=io)

    # ----- parameters ------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Accept new values only if valid now (and applicable to the running session)."""
        current = {name: self.get_parameter(name).value for name in params.PARAMETER_NAMES}
        try:
            config = params.check_update(current, {p.name: p.value for p in parameters},
                                         configured=self._ctl is not None)
            if self._ctl is not None:
                self._ctl.check_config(config, self._config)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        """Apply accepted values: reporting rates always, the rest to a configured run."""
        names = {p.name for p in parameters}
        for name, timer in (('status_rate_hz', self._status_timer),
                            ('diagnostics_rate_hz', self._diag_timer)):
            if name in names:
                timer.timer_period_ns = int(NANOSECONDS / self.get_parameter(name).value)
        with self._io_lock:
            if self._ctl is None:
                return  # read at the next configure
            config = params.read_node_config(self)
            note = self._ctl.apply_config(config, self._config)
            self._outputs.router.frame_id = config.base_frame_id
            # Only live fields can differ: the others are refused while configured.
            self._config = config
        if note:
            self.get_logger().warning(f'prompt {note}')

    # ----- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load robot + policy, warm up, create I/O; FAILURE (reason reported) on a bad config."""
        try:
            self._configure()
        except CONFIGURE_ERRORS as error:
            self._configure_failed(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        except BaseException:
            self._configure_failed(f'configure failed:\n{traceback.format_exc()}')
            raise  # rclpy turns it into ERROR
        self._failure = ''
        self.get_logger().info(
            f"configured robot '{self._ctl.adapter.name}' ({self._ctl.adapter.dof} dims, "
            f'{len(self._inputs)} inputs) with '
            f"{self._config.policy.checkpoint or 'a tiny random model'}")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> None:
        """Release what configure created, then log and report why it failed."""
        self._release()  # no model, no half-created I/O: a later configure starts clean
        self._failure = reason
        self.get_logger().error(reason)
        self._publish_status()
        self._publish_diagnostics()

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
        session = build_session(
            cfg, adapter, inputs, self._policy, clock=self._now, decode=self._decode,
            publish=self._publish, publish_chunk=self._publish_chunk,
            on_state_change=self._publish_status)
        with self._io_lock:
            self._config, self._inputs = cfg, inputs
            self._outputs = NodeOutputs(self, adapter, router, cfg.execution.dt)
            self._subscribe_inputs(inputs)
            self._status, self._ctl = session.status, session  # I/O callbacks serve from here

    def _subscribe_inputs(self, inputs: tuple[InputSpec, ...]) -> None:
        """
        Subscribe to the robot's inputs, keeping the subscriptions of an earlier configure.

        ``robot`` is read-only, so a re-configure asks for the same inputs: their subscriptions
        live until the node is destroyed (callbacks drop messages while unconfigured). Destroying
        a subscription while the executor may be taking a message from it makes rclpy 7.1.6 fail
        that take with "cannot use Destroyable" (``Spinner`` reports it as a callback error).
        """
        if self._input_specs == inputs:
            return
        for subscription in self._input_subs:  # only if the robot YAML changed on disk
            self.destroy_subscription(subscription)
        self._input_subs = [self.create_subscription(
            MESSAGE_TYPES[spec.kind], spec.topic,
            lambda msg, spec=spec: self._on_input(spec, msg), qos_profile_sensor_data,
            callback_group=self._io_group, event_callbacks=_NO_SUB_EVENTS)
            for spec in inputs]
        self._input_specs = inputs

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
        """Stop commanding: stop the loop, join the inference thread, hold (base ramps down)."""
        self._stop_control()
        self._ctl.set_state(NodeState.INACTIVE, '')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the I/O and release the model (GPU memory too)."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop commanding and release everything."""
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """
        Stop commanding, join the inference thread and free the model.

        Idempotent, and safe after the ROS context was shut down: the final commands are then
        skipped and logged instead of raising.
        """
        self._stop_control()
        self._release()

    def _stop_control(self) -> None:
        """Stop the control loop, send the final commands, then join the worker."""
        with self._tick_lock:  # a tick in progress finishes first; later ticks see no timer
            timer, self._control_timer = self._control_timer, None
        if timer is not None:
            timer.stop()
            self._final_commands()  # first: an inference in progress may take long
        if self._worker is not None:
            self._worker.stop()  # joins the thread; waits for an inference in progress
            self._worker = None
        if self._ctl is not None:
            self._ctl.in_flight = False  # a wake the stopped worker never served

    def _final_commands(self) -> None:
        """
        Send the stop commands while the ROS context can deliver them; never raise.

        A node that was commanding holds its positions while the base ramps down within its
        acceleration limits (one command per control period), then sends a zero base velocity;
        otherwise (disabled, or nothing commanded yet) only bases get a zero velocity.
        """
        # Not the node's logger: it would also try to publish to /rosout, which may be gone.
        logger = get_logger(SHUTDOWN_LOGGER)
        dt = self._ctl.executor.config.dt
        commands = self._ctl.stop_commands(max(1, int(STOP_RAMP_MAX_S / dt)))
        for k, command in enumerate(commands):
            if not self.context.ok():
                logger.info('ROS is shut down: the final hold command was not sent '
                            '(controllers keep the last command).')
                return
            try:
                self._publish(command)
            except _rclpy.RCLError as error:  # the context was shut down after the check
                logger.info(f'final hold command not sent: {error}')
                return
            if k + 1 < len(commands):
                time.sleep(dt)

    def _release(self) -> None:
        """Destroy configure's entities (no I/O callback runs meanwhile) and close the policy."""
        with self._io_lock:
            self._ctl = self._status = None  # I/O callbacks serve no more (subscriptions stay)
            if self._outputs is not None:
                self._outputs.destroy()
                self._outputs = None
        if self._policy is not None:
            self._policy.close()
            self._policy = None

    # ----- inputs --------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / conversions.NANOSECONDS

    def _decode(self, spec: InputSpec, message) -> np.ndarray:
        return decode_image(spec, message, max_pixels=self._config.max_image_pixels)

    def _on_input(self, spec, msg) -> None:
        """Validate and store the newest message of one input (header stamp, else arrival)."""
        with self._io_lock:
            if self._ctl is None:
                return
            arrival = self._now()
            stamp = getattr(getattr(msg, 'header', None), 'stamp', None)
            stamp = (conversions.to_seconds(stamp) if stamp and (stamp.sec or stamp.nanosec)
                     else arrival)
            try:
                payload = check_message(spec, msg, max_pixels=self._config.max_image_pixels)
            except InputError as error:
                self._ctl.buffer.reject(spec.name, error.reason)
                self._report_error(str(error))
                return
            self._ctl.buffer.put(spec.name, payload, stamp, arrival)
            if abs(stamp - arrival) > CLOCK_SKEW_WARN_S:
                self.get_logger().warning(
                    f'{spec.name} on {spec.topic}: header stamp {stamp - arrival:+.3f} s from '
                    'the node clock at arrival (clock skew?); its age counts from the older of '
                    'stamp and arrival.', throttle_duration_sec=LOG_PERIOD_S)

    def _accept_instruction(self, text: str) -> tuple[bool, str]:
        if self._ctl is None:
            return False, 'the node is not configured: configure it first.'
        try:
            note = self._ctl.set_instruction(text, self._config.max_instruction_chars)
        except ValueError as error:
            self._report_error(f'instruction rejected: {error}')
            return False, str(error)
        return True, note

    def _on_instruction(self, msg: String) -> None:
        with self._io_lock:
            self._accept_instruction(msg.data)

    def _on_set_instruction(self, request, response):
        with self._io_lock:
            response.previous_instruction = self._ctl.instruction if self._ctl else ''
            response.success, response.message = self._accept_instruction(request.instruction)
        return response

    def _on_enable(self, request, response):
        with self._io_lock:
            if self._ctl is None:
                response.success = False
                response.message = 'the node is not configured: configure and activate it first.'
                return response
            self._ctl.set_enabled(request.data)
        response.success, response.message = True, f'enabled={request.data}'
        return response

    def _on_move_to_start(self, request, response):
        """Start the move to the robot config's start_pose (active node, policy disabled)."""
        response.success, response.message = False, 'activate the node first'
        with self._io_lock:
            if self._ctl is not None and self._control_timer is not None:
                try:
                    response.message = self._ctl.start_move()
                    response.success = True
                except (RuntimeError, ValueError) as error:
                    response.message = str(error)
        if not response.success:
            self._report_error(f'move_to_start refused: {response.message}')
        return response

    def _report_error(self, text: str) -> None:
        status = self._status
        if status is not None:
            status.last_error = text
        self.get_logger().warning(text, throttle_duration_sec=LOG_PERIOD_S)

    # ----- outputs: inference (worker thread), control (loop thread), reporting -------------
    def _on_inference_error(self, error: Exception) -> None:
        message = self._ctl.inference_failed(error)
        self._report_error(message)
        if self._ctl.fatal:
            self.get_logger().error(message, throttle_duration_sec=LOG_PERIOD_S)

    def _on_policy_lost(self, reason: str) -> None:
        """Drop the plan at once when the policy server's connection drops (client thread)."""
        ctl = self._ctl
        if ctl is not None:
            self._report_error(ctl.inference_failed(ConnectionError(reason)))

    def _publish_chunk(self, result, obs_time: float, instruction: str, sequence: int) -> None:
        if self.context.ok():  # shutting down: the chunk is no longer delivered
            self._outputs.chunk(result, obs_time=obs_time, now=self._now(),
                                instruction=instruction, sequence=sequence,
                                reporting=self._config.reporting)

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
        self._outputs.command(command, self.get_clock().now().to_msg())

    def _snapshot(self) -> StatusSnapshot:
        # No lock: the reporting publishers live as long as the node, and the status may be
        # published from inside a control tick (a lock here would invert the lock order).
        status, ctl = self._status, self._ctl
        if status is None or ctl is None:
            return StatusSnapshot.idle(NodeState.UNCONFIGURED, self._failure,
                                       last_error=self._failure)
        return status.snapshot(self._now(), instruction=ctl.instruction, enabled=ctl.enabled,
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
    """Run the node until Ctrl-C / SIGTERM, then stop the robot and exit (``ros2 run``)."""
    # Hand the GIL over every millisecond (default 5 ms) so that the control timer waits less
    # for the inference thread.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    # Own signal handling: the final commands must go out before the context is shut down.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    exit_with_parent_if_asked(args)  # launch files pass --exit-with-parent: never an orphan
    try:
        node = PolicyNode()
    except BaseException:
        rclpy.try_shutdown()
        raise
    lifecycle.spin_until_signal(node, threads=EXECUTOR_THREADS, on_stop=node.close)


if __name__ == '__main__':
    main()
