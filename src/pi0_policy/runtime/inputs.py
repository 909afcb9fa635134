"""
The policy's inputs without ROS: which inputs a robot needs, the newest sample of each, staleness.

Pure Python (no rclpy). The node's subscription callbacks ``put`` validated payloads (or
``reject`` malformed messages), the control tick asks ``problem(now)``, the inference thread
takes a ``snapshot`` and ``assemble_observation`` turns it into a policy observation. Camera
payloads stay encoded until inference; the caller passes the function that decodes them.
An observation is complete only when every required input has a valid sample younger than
``max_age``; otherwise ``problem`` names the first input that is missing, invalid or stale.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import enum
import threading
from typing import Any

import numpy as np

# Age reported for an input that was never received (PolicyStatus convention).
NEVER_RECEIVED = -1.0
# A header stamp further than this from the receive time (s) is reported: clock skew between
# computers, or a driver that stamps wrongly.
CLOCK_SKEW_WARN_S = 1.0


@dataclass(frozen=True)
class InputSample:
    """The newest message of one input."""

    # The ROS message as received (or the payload validated from it).
    message: Any
    # Its time in seconds (header stamp, or receive time when the header stamp is zero).
    stamp: float
    # When it arrived (s, the node's clock); None: the same as stamp.
    arrival: float | None = None

    def age(self, now: float) -> float:
        """
        Return the age in seconds at ``now``: since the stamp or the arrival, the older.

        A stamp from the future (clock skew) cannot keep an input fresh: the arrival bounds it.
        """
        arrival = self.stamp if self.arrival is None else self.arrival
        return now - min(self.stamp, arrival)

    @property
    def skew(self) -> float:
        """Return stamp minus arrival (s): > 0 for a stamp ahead of the node's clock."""
        return 0.0 if self.arrival is None else self.stamp - self.arrival


class ObservationBuffer:
    """Thread-safe store of the newest message per input, with staleness checks."""

    def __init__(self, names: Sequence[str], max_age: float,
                 required: Sequence[str] | None = None) -> None:
        """
        Create an empty buffer.

        Args:
            names: Names of all inputs (e.g. "camera 'cam_high'").
            max_age: Seconds after which an input counts as stale.
            required: The inputs an observation needs (all of ``names`` when None).

        Raises:
            ValueError: ``max_age`` is not positive, a name repeats, or a required name is not
                an input.

        """
        if max_age <= 0.0:
            raise ValueError(f'max_age is {max_age} s; expected a positive number of seconds.')
        if len(set(names)) != len(names):
            raise ValueError(f'Input names repeat in {list(names)}; expected unique names.')
        required = tuple(names) if required is None else tuple(required)
        unknown = [name for name in required if name not in names]
        if unknown:
            raise ValueError(f'Required inputs {unknown} are not among the inputs {list(names)}.')
        self._names = tuple(names)
        self._required = required
        # Seconds after which an input is stale (may be changed while running).
        self.max_age = max_age
        self._samples: dict[str, InputSample] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        """Return the input names in order."""
        return self._names

    def put(self, name: str, message: Any, stamp: float, arrival: float | None = None) -> None:
        """Store a valid message of input ``name`` taken at ``stamp``, received at ``arrival``."""
        self._check_name(name)
        with self._lock:
            self._samples[name] = InputSample(message, stamp, arrival)
            self._errors.pop(name, None)

    def reject(self, name: str, reason: str) -> None:
        """Mark input ``name`` unusable until its next valid message, because of ``reason``."""
        self._check_name(name)
        with self._lock:
            self._errors[name] = reason

    def ages(self, now: float) -> tuple[float, ...]:
        """Return the age (s) of each input at ``now`` in ``names`` order, or NEVER_RECEIVED."""
        with self._lock:
            samples = dict(self._samples)
        return tuple(max(0.0, samples[name].age(now)) if name in samples else NEVER_RECEIVED
                     for name in self._names)

    def skews(self) -> tuple[float, ...]:
        """Return stamp minus arrival (s) of each input's newest sample (0 when none)."""
        with self._lock:
            samples = dict(self._samples)
        return tuple(samples[name].skew if name in samples else 0.0 for name in self._names)

    def problem(self, now: float) -> str | None:
        """Return why no observation can be formed at ``now`` (naming the input), or None."""
        with self._lock:
            samples = dict(self._samples)
            errors = dict(self._errors)
        for name in self._required:
            if name in errors:
                return f'{name} is invalid: {errors[name]}'
            if name not in samples:
                return f'{name} has not been received'
            age = samples[name].age(now)
            if age > self.max_age:
                return f'{name} is {age:.3f} s old (max_age {self.max_age:.3f} s)'
        return None

    def snapshot(self, now: float | None = None) -> dict[str, InputSample]:
        """
        Return the newest valid sample of every input received so far.

        Args:
            now: When given, only samples at most ``max_age`` old at ``now`` (seconds) are
                returned: a hold must not go back to a pose measured long ago.

        """
        with self._lock:
            return {name: sample for name, sample in self._samples.items()
                    if name not in self._errors
                    and (now is None or sample.age(now) <= self.max_age)}

    def _check_name(self, name: str) -> None:
        """Raise if ``name`` is not an input (a wiring bug, not bad data)."""
        if name not in self._names:
            raise KeyError(f'Unknown input {name!r}; the buffer holds {list(self._names)}.')


class InputKind(enum.Enum):
    """Kinds of policy inputs; the value names the ROS message type subscribed to."""

    IMAGE = 'sensor_msgs/Image'
    COMPRESSED_IMAGE = 'sensor_msgs/CompressedImage'
    JOINT_STATES = 'sensor_msgs/JointState'
    ODOMETRY = 'nav_msgs/Odometry'


@dataclass(frozen=True)
class InputSpec:
    """One subscribed input of the policy."""

    # Name used in diagnostics, e.g. "camera 'cam_high'".
    name: str
    kind: InputKind
    topic: str
    # Camera name for images; joint-name prefix for joint states; '' otherwise.
    key: str = ''


class InputError(ValueError):
    """A ValueError caused by the newest message of one input."""

    def __init__(self, spec: InputSpec, reason: str) -> None:
        """Record which input failed and why."""
        super().__init__(f'{spec.name} on {spec.topic}: {reason}')
        self.spec = spec
        self.reason = reason


def input_specs(adapter: Any, odom_topic: str) -> tuple[InputSpec, ...]:
    """
    List the inputs an adapter needs: model cameras, joint-state topics, odometry if in state.

    Args:
        adapter: An ``embodiment_adapters.EmbodimentAdapter``.
        odom_topic: Odometry topic, used when the robot config puts the base in the state.

    Returns:
        The input specs; cameras without a model slot are left out (the model cannot use them).

    """
    specs = [InputSpec(f"camera '{cam.name}'",
                       InputKind.COMPRESSED_IMAGE if cam.compressed else InputKind.IMAGE,
                       cam.topic, cam.name)
             for cam in adapter.cameras if cam.model_slot is not None]
    specs += [InputSpec(f"joint states '{topic.topic}'", InputKind.JOINT_STATES, topic.topic,
                        topic.prefix) for topic in adapter.joint_state_topics]
    if adapter.config.base_in_state:
        specs.append(InputSpec(f"odometry '{odom_topic}'", InputKind.ODOMETRY, odom_topic))
    return tuple(specs)


def required_names(adapter: Any, specs: Sequence[InputSpec]) -> tuple[str, ...]:
    """Return the names of the inputs without which no observation is formed."""
    optional = {f"camera '{cam.name}'" for cam in adapter.cameras if not cam.required}
    return tuple(spec.name for spec in specs if spec.name not in optional)


def merge_joint_states(parts: Sequence[tuple[Sequence[str], np.ndarray]]
                       ) -> tuple[tuple[str, ...], np.ndarray]:
    """
    Merge several (names, positions) pairs by name; a later pair wins on a repeated name.

    Returns:
        (names, positions (N,) float64) in first-seen order.

    """
    merged: dict[str, float] = {}
    for names, positions in parts:
        merged.update(zip(names, (float(value) for value in positions)))
    return tuple(merged), np.fromiter(merged.values(), np.float64, len(merged))


# Decodes a stored camera payload of an input into (H, W, 3) uint8 (raises InputError).
ImageDecoder = Callable[['InputSpec', Any], np.ndarray]


def joint_positions(specs: Sequence[InputSpec], samples: Mapping[str, InputSample]
                    ) -> tuple[tuple[str, ...], np.ndarray]:
    """Merge the stored joint states of all joint-state inputs by (prefixed) name."""
    parts = [samples[spec.name].message for spec in specs
             if spec.kind == InputKind.JOINT_STATES and spec.name in samples]
    return merge_joint_states(parts)


def assemble_observation(specs: Sequence[InputSpec], samples: Mapping[str, InputSample],
                         adapter: Any, prompt: str, *, now: float, max_age: float,
                         decode: ImageDecoder) -> tuple[dict[str, Any], float]:
    """
    Turn the newest samples into a policy observation.

    Args:
        specs: The inputs.
        samples: ``ObservationBuffer.snapshot()``.
        adapter: The embodiment adapter (state by joint name).
        prompt: The instruction.
        now: Current time (s); optional cameras older than ``max_age`` are left out (masked).
        max_age: Seconds after which an input is stale.
        decode: Turns a stored camera payload into (H, W, 3) uint8; raises InputError.

    Returns:
        (observation {'images', 'state', 'prompt'}, obs_time = newest input stamp, at most now).

    Raises:
        InputError: A stored message does not decode.
        ValueError: The joint states lack a joint or are inconsistent (adapter message).

    """
    images = {spec.key: decode(spec, samples[spec.name].message) for spec in specs
              if spec.kind in (InputKind.IMAGE, InputKind.COMPRESSED_IMAGE)
              and spec.name in samples and samples[spec.name].age(now) <= max_age}
    names, positions = joint_positions(specs, samples)
    odometry = [samples[spec.name].message for spec in specs
                if spec.kind == InputKind.ODOMETRY and spec.name in samples]
    state = adapter.state_from_joint_states(names, positions,
                                            odometry[0] if odometry else None)
    stamps = [samples[spec.name].stamp for spec in specs if spec.name in samples]
    obs_time = min(max(stamps), now) if stamps else now
    return {'images': images, 'state': state, 'prompt': prompt}, obs_time


def measured_command(adapter: Any, specs: Sequence[InputSpec],
                     samples: Mapping[str, InputSample]) -> np.ndarray | None:
    """
    Return the measured robot position as a (D,) command (base dims 0), or None if unknown.

    Used as the reference of the first safe command and of a hold before any command, so it
    must equal what the robot's command joints read now. Arm joints are read by name. A gripper
    reads its command joint's own JointState value when the robot publishes it (Interbotix and
    the sim publish ``gripper``); otherwise its state joint's opening fraction between the
    robot's state closed/open values is mapped onto the command closed/open values. The model's
    state -> action conventions are not used: ALOHA's state and action gripper conventions
    differ, and a round trip through them would move the gripper on the first command.

    Args:
        adapter: The embodiment adapter.
        specs: The inputs.
        samples: The samples to read, e.g. ``ObservationBuffer.snapshot(now)`` (fresh only).

    Returns:
        (D,) command in ``action_names`` order, or None when a used joint is missing or not
        finite.

    """
    names, positions = joint_positions(specs, samples)
    try:  # every used joint present and finite (the adapter's checks and messages)
        adapter.state_from_joint_states(
            names, positions, np.zeros(len(adapter.config.base))
            if adapter.config.base_in_state else None)
    except ValueError:
        return None
    value = dict(zip(names, positions))
    command = np.zeros(adapter.dof)  # (D,) joints first, then base dims (0: at rest)
    for k, joint in enumerate(adapter.config.joints):
        command[k] = _measured_joint(joint, value)
    return command if np.isfinite(command).all() else None


def _measured_joint(joint: Any, value: Mapping[str, float]) -> float:
    """Return the command-joint value of one ``JointSpec`` from joint positions by name."""
    gripper = joint.gripper
    if gripper is None:
        return value[joint.name]
    own = value.get(joint.name)
    if own is not None and np.isfinite(own):
        return own
    fraction = (value[gripper.state_joint] - gripper.state_closed_value) / (
        gripper.state_open_value - gripper.state_closed_value)  # 0 = closed, 1 = open
    return gripper.closed_value + fraction * (gripper.open_value - gripper.closed_value)
