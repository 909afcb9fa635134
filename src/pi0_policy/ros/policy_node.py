"""
The pi0 policy as a managed (lifecycle) ROS 2 node: cameras + joint states in, commands out.

Transitions: configure reads the parameters once, loads the robot config and the policy and
warms it up (a bad config gives FAILURE with the reason logged); activate starts the control
timer and the inference thread; deactivate stops them (the base gets a zero twist) and holds;
cleanup frees the model. Threads: the control timer has its own callback group and only takes
the next action from the chunk executor, filters it and publishes; subscriptions, services and
reporting share another group; inference runs in ``InferenceWorker``'s thread.

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

from diagnostic_msgs.msg import DiagnosticArray
from embodiment_adapters import load_robot_config, make_adapter, unified
from pi0_msgs.msg import ActionChunk, PolicyStatus
from pi0_msgs.srv import SetInstruction
from pi0_policy.ros import conversions, diagnostics, params, visualization
from pi0_policy.ros.commands import CommandRouter
from pi0_policy.ros.control_loop import ControlLoop
from pi0_policy.ros.diagnostics import NodeState
from pi0_policy.ros.observation import (
    assemble_observation, check_message, input_specs, InputError, measured_command,
    MESSAGE_TYPES, ObservationBuffer, required_names)
from pi0_policy.ros.worker import InferenceWorker
from pi0_policy.runtime.chunking import make_executor
from pi0_policy.runtime.policy import Pi0Policy, TIME_TOTAL
from pi0_policy.runtime.safety import HoldReason, SafetyConfig, SafetyFilter
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool
import torch
from visualization_msgs.msg import MarkerArray

NODE_NAME = 'pi0_policy_node'
DEPTH = 10  # queue depth of reliable topics
RATE_WINDOW = 1.0  # seconds over which the achieved control rate is measured
MS = 1000.0
# Executor threads: inputs/services/reporting and lifecycle services (control has its own thread).
EXECUTOR_THREADS = 3
GIL_SWITCH_INTERVAL = 0.001  # seconds
SHUTDOWN_LOGGER = f'{NODE_NAME}.shutdown'  # console-only logger used once ROS is shut down


class PolicyNode(LifecycleNode):
    """Run π0 on one robot; see the module docstring for the transitions and threads."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters; configure/activate at once when ``autostart`` is set."""
        super().__init__(NODE_NAME, **kwargs)
        params.declare_parameters(self)
        self._config = None
        self._policy: Pi0Policy | None = None
        self._worker: InferenceWorker | None = None
        self._control_timer = None
        self._entities: list = []  # subscriptions, publishers, services, timers of configure
        # Held by a control tick; close() takes it to wait for a tick that is still running.
        self._tick_lock = threading.Lock()
        if self.get_parameter('autostart').value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ----- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load robot + policy, warm up, create I/O; FAILURE (reason logged) on a bad config."""
        try:
            cfg = params.read_node_config(self)
            torch.set_num_threads(cfg.policy.torch_threads)
            adapter = make_adapter(load_robot_config(cfg.robot))
            policy = Pi0Policy.from_checkpoint(
                cfg.policy.checkpoint, adapter, device=cfg.policy.device, dtype=cfg.policy.dtype,
                num_steps=cfg.policy.num_steps, asset_id=cfg.policy.asset_id, seed=cfg.policy.seed)
            policy.warmup()
            execution = replace(cfg.execution, horizon=policy.action_horizon)
            safety = SafetyConfig(
                lower=adapter.lower, upper=adapter.upper, is_velocity=adapter.is_velocity,
                max_velocity=adapter.max_velocity * cfg.velocity_scale, dt=execution.dt,
                names=adapter.action_names)
            router = CommandRouter(adapter.commands, adapter.action_names, adapter.config.base,
                                   control_period=execution.dt, base_frame_id=cfg.base_frame_id)
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        self._config, self._adapter, self._policy, self._router = cfg, adapter, policy, router
        self._executor, self._safety = make_executor(execution), SafetyFilter(safety)
        self._inputs = input_specs(adapter, cfg.odom_topic)
        self._buffer = ObservationBuffer([s.name for s in self._inputs], cfg.max_age,
                                         required_names(adapter, self._inputs))
        self._instruction, self._enabled = cfg.prompt, cfg.enabled_at_start
        self._latency = diagnostics.LatencyWindow(cfg.reporting.latency_window)
        self._rate = diagnostics.RateMeter(RATE_WINDOW)
        self._state, self._detail, self._last_error = NodeState.INACTIVE, '', ''
        self._sequence = self._ticks = self._hold_ticks = self._failures = 0
        self._in_flight = self._reset_pending = self._commanded = False
        self._fault: str | None = None
        self._create_io(cfg)
        self.get_logger().info(
            f"configured robot '{adapter.name}' ({adapter.dof} dims, {len(self._inputs)} inputs) "
            f"with {cfg.policy.checkpoint or 'a tiny random model'}")
        return TransitionCallbackReturn.SUCCESS

    def _create_io(self, cfg) -> None:
        """Create subscriptions, publishers, services and reporting timers."""
        io = MutuallyExclusiveCallbackGroup()
        for spec in self._inputs:
            self._entities.append(self.create_subscription(
                MESSAGE_TYPES[spec.kind], spec.topic,
                lambda msg, spec=spec: self._on_input(spec, msg), qos_profile_sensor_data,
                callback_group=io))
        self._command_pubs = [self.create_lifecycle_publisher(t, s.topic, DEPTH)
                              for t, s in zip(self._router.message_types, self._router.specs)]
        self._chunk_pub = self.create_lifecycle_publisher(ActionChunk, '~/action_chunk', DEPTH)
        self._ghost_pub = self.create_lifecycle_publisher(JointState, '~/preview/joint_states',
                                                          DEPTH)
        self._marker_pub = self.create_lifecycle_publisher(MarkerArray, '~/preview/markers',
                                                           DEPTH)
        self._status_pub = self.create_publisher(PolicyStatus, '~/status', DEPTH)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', DEPTH)
        self._entities += self._command_pubs + [
            self._chunk_pub, self._ghost_pub, self._marker_pub, self._status_pub, self._diag_pub,
            self.create_subscription(String, '~/instruction', self._on_instruction, DEPTH,
                                     callback_group=io),
            self.create_service(SetInstruction, '~/set_instruction', self._on_set_instruction,
                                callback_group=io),
            self.create_service(SetBool, '~/enable', self._on_enable, callback_group=io),
            self.create_timer(1.0 / cfg.reporting.status_rate_hz, self._publish_status,
                              callback_group=io),
            self.create_timer(1.0 / cfg.reporting.diagnostics_rate_hz, self._publish_diagnostics,
                              callback_group=io)]

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference thread and the control timer, then enable the publishers."""
        self._executor.reset()
        self._safety.reset()
        self._commanded = False
        self._worker = InferenceWorker(self._infer_once, self._on_inference_error,
                                       niceness=self._config.policy.inference_niceness)
        self._worker.start()
        self._control_timer = ControlLoop(self.get_clock(), self._executor.config.dt,
                                          self._on_control_tick)
        self._control_timer.start()
        self._set_state(NodeState.WAITING if self._enabled else NodeState.DISABLED, '')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop commanding: stop the timer, zero the base, join the inference thread."""
        self._stop_control()
        self._set_state(NodeState.INACTIVE, '')
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

        Idempotent, and safe after the ROS context was shut down (Ctrl-C): the final hold is
        then skipped and logged instead of raising.
        """
        self._stop_control()
        self._release()

    def _stop_control(self) -> None:
        """Stop the control timer, join the worker, then send a final hold (zero base velocity)."""
        with self._tick_lock:  # a tick in progress finishes first; later ticks see no timer
            timer, self._control_timer = self._control_timer, None
        if timer is not None:
            timer.stop()
        if self._worker is not None:
            self._worker.stop()  # joins the thread; waits for an inference in progress
            self._worker = None
        if timer is not None:
            self._final_hold()

    def _final_hold(self) -> None:
        """Publish one hold command if the ROS context can still deliver it; never raise."""
        # Not the node's logger: it would also try to publish to /rosout, which is gone.
        logger = get_logger(SHUTDOWN_LOGGER)
        if not self.context.ok():
            logger.info('ROS is shut down: no final hold command sent (controllers keep the '
                        'last command).')
            return
        try:
            self._publish(self._safety.hold(HoldReason.DISABLED, self._measured())[0])
        except _rclpy.RCLError as error:  # the context was shut down after the check above
            logger.info(f'final hold command not sent: {error}')

    def _release(self) -> None:
        """Destroy configure's entities and close the policy."""
        for entity in self._entities:
            destroy = {'Subscription': self.destroy_subscription, 'Service':
                       self.destroy_service, 'Timer': self.destroy_timer}.get(
                type(entity).__name__, self.destroy_publisher)
            destroy(entity)
        self._entities = []
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
            self._buffer.put(spec.name, check_message(spec, msg), stamp or self._now())
        except InputError as error:
            self._buffer.reject(spec.name, error.reason)
            self._report_error(str(error))

    def _accept_instruction(self, text: str) -> tuple[bool, str]:
        try:
            self._instruction = conversions.clean_instruction(
                text, self._config.max_instruction_chars)
        except ValueError as error:
            self._report_error(f'instruction rejected: {error}')
            return False, str(error)
        return True, ''

    def _on_instruction(self, msg: String) -> None:
        self._accept_instruction(msg.data)

    def _on_set_instruction(self, request, response):
        response.previous_instruction = self._instruction
        response.success, response.message = self._accept_instruction(request.instruction)
        return response

    def _on_enable(self, request, response):
        self._enabled = request.data
        self._reset_pending = True
        response.success, response.message = True, f'enabled={request.data}'
        return response

    def _report_error(self, text: str) -> None:
        self._last_error = text
        self.get_logger().warning(text, throttle_duration_sec=1.0)

    # ----- inference (worker thread) -------------------------------------------------------
    def _infer_once(self) -> None:
        """Assemble the observation, infer, queue the chunk and publish it with its preview."""
        try:
            now, instruction = self._now(), self._instruction
            try:
                observation, obs_time = assemble_observation(
                    self._inputs, self._buffer.snapshot(), self._adapter, instruction, now=now,
                    max_age=self._config.max_age)
            except InputError as error:
                self._buffer.reject(error.spec.name, error.reason)
                raise
            result = self._policy.infer(observation)
            self._sequence += 1
            self._executor.add_chunk(result.actions, obs_time, self._sequence)
            self._fault = None
            self._latency.add(result.timing[TIME_TOTAL] / MS)
            self._publish_chunk(result, obs_time, instruction)
        finally:
            self._in_flight = False

    def _on_inference_error(self, error: Exception) -> None:
        self._failures += 1
        self._fault = f'inference failed: {error}'
        self._reset_pending = True
        self._report_error(self._fault)

    def _publish_chunk(self, result, obs_time: float, instruction: str) -> None:
        if not self.context.ok():  # shutting down: the chunk is no longer delivered
            return
        stamp, a = conversions.to_time(obs_time), self._adapter
        self._chunk_pub.publish(conversions.action_chunk(
            stamp=stamp, embodiment=a.name, sequence=self._sequence, instruction=instruction,
            control_period=self._executor.config.dt, joint_names=a.action_names,
            actions=result.actions, unified_names=unified.UNIFIED_NAMES,
            unified_actions=result.unified_actions,
            inference_latency=result.timing[TIME_TOTAL] / MS))
        if self._config.reporting.preview:
            ghost, markers = visualization.chunk_preview(
                a, result.actions, control_period=self._executor.config.dt, stamp=stamp,
                frame_id=self._config.reporting.preview_frame)
            self._ghost_pub.publish(ghost)
            self._marker_pub.publish(markers)

    # ----- control (timer thread) ----------------------------------------------------------
    def _measured(self):
        return measured_command(self._adapter, self._inputs, self._buffer.snapshot())

    def _on_control_tick(self) -> None:
        """Run one control tick unless control was stopped while this callback waited."""
        with self._tick_lock:
            if self._control_timer is not None:
                self._control_tick()

    def _control_tick(self) -> None:
        """Take the next action (or hold), make it safe and publish it; never infers."""
        now = self._now()
        self._rate.tick(now)
        self._ticks += 1
        if self._reset_pending:
            self._reset_pending = False
            self._executor.reset()
        if not self._enabled:
            if self._commanded:  # last command: hold position, zero base velocity
                self._publish(self._safety.hold(HoldReason.DISABLED)[0])
            self._commanded = False
            self._safety.reset()
            self._set_state(NodeState.DISABLED, 'enable with the ~/enable service')
            return
        problem = self._buffer.problem(now)
        if problem is not None:
            if self._state == NodeState.RUNNING:
                self._executor.reset()  # the plan came from inputs that are now stale
            return self._hold(HoldReason.STALE_INPUT, problem)
        action = self._executor.next_action(now)
        if not self._in_flight and self._executor.needs_inference(now):
            self._in_flight = True
            self._worker.wake()
        if action is None:
            reason = HoldReason.INFERENCE_FAILURE if self._fault else HoldReason.NO_ACTION
            return self._hold(reason, self._fault or 'waiting for the next chunk')
        measured = None if self._safety.last_command is not None else self._measured()
        if measured is None and self._safety.last_command is None:
            return self._hold(HoldReason.NO_ACTION, 'no joint positions yet')
        command, report = self._safety.filter(action, measured)
        self._publish(command)
        self._commanded = True
        self._set_state(NodeState.RUNNING, report.describe(self._safety.config)
                        if report.clamped else '')

    def _hold(self, reason: HoldReason, detail: str) -> None:
        self._hold_ticks += 1
        self._publish(self._safety.hold(reason, self._measured())[0])
        self._set_state(NodeState.HOLDING if self._commanded else NodeState.WAITING,
                        f'{reason.value}: {detail}')

    def _publish(self, command) -> None:
        if not self.context.ok():  # a tick that raced with Ctrl-C: nothing can be delivered
            return
        stamp = self.get_clock().now().to_msg()
        for publisher, msg in zip(self._command_pubs, self._router.messages(command, stamp)):
            if msg is not None:
                publisher.publish(msg)

    # ----- reporting -----------------------------------------------------------------------
    def _set_state(self, state: NodeState, detail: str) -> None:
        changed = state != self._state
        self._state, self._detail = state, detail
        if changed:
            self._publish_status()

    def _snapshot(self) -> diagnostics.StatusSnapshot:
        now, progress = self._now(), self._executor.progress
        detail = self._detail or (f'last error: {self._last_error}' if self._last_error else '')
        return diagnostics.StatusSnapshot(
            state=self._state, detail=detail, embodiment=self._adapter.name,
            instruction=self._instruction, enabled=self._enabled,
            latency_last=self._latency.last,
            latency_p50=self._latency.percentile(diagnostics.MEDIAN),
            latency_p99=self._latency.percentile(diagnostics.TAIL),
            rate_achieved=self._rate.rate(now) if self._control_timer else 0.0,
            rate_target=self._executor.config.control_rate_hz,
            input_names=self._buffer.names, input_ages=self._buffer.ages(now),
            max_age=self._config.max_age, chunk_sequence=max(progress.sequence, 0),
            chunk_index=max(progress.index, 0), chunk_length=progress.length,
            chunk_age=progress.chunk_age or 0.0, last_error=self._last_error,
            ticks=self._ticks, hold_ticks=self._hold_ticks,
            clamped_commands=self._safety.stats.clamped, inference_failures=self._failures)

    def _publish_status(self) -> None:
        self._status_pub.publish(diagnostics.policy_status(
            self._snapshot(), self.get_clock().now().to_msg()))

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(diagnostics.diagnostic_array(
            self._snapshot(), self.get_clock().now().to_msg(), self.get_fully_qualified_name()))


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
