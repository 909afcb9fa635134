"""
Implement the config-driven adapter shared by every embodiment family.

Axis letters used in shape comments: H = action horizon, U = UNIFIED_DIM (18), S = robot state
size (``len(state_names)``), D = robot action size (``dof``), N = joints in a JointState.

Conventions (per robot config, see config/robots/README.md):

- joints: unified value = robot value (rad / m), optionally sign-flipped by a family;
- grippers: unified value = linear map of the robot value between the gripper's open and closed
  values onto ``unified_gripper_open`` / ``unified_gripper_closed`` (openpi / pi data use
  0 = open, 1 = closed for non-ALOHA robots); a family may replace this (ALOHA's ``adapt_to_pi``);
- base: velocities (m/s, rad/s), copied as they are; never delta actions.
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any, ClassVar

from embodiment_adapters.config import (
    ActionMode, CameraSpec, CommandSpec, config_error, GripperSpec, JointStateTopic, RobotConfig)
from embodiment_adapters.unified import MODEL_IMAGE_KEYS, UNIFIED_DIM
import numpy as np

# Image channels expected from cameras (RGB, HWC uint8).
IMAGE_CHANNELS = 3
# Number of unexpected joint names quoted in error messages.
MAX_NAMES_IN_ERROR = 12


def gripper_to_unit(x: np.ndarray, open_value: float, closed_value: float) -> np.ndarray:
    """
    Map a gripper value linearly so that open -> 0 and closed -> 1 (no clipping).

    Args:
        x: gripper values in robot units, any shape.
        open_value: robot value when fully open.
        closed_value: robot value when fully closed.

    Returns:
        Array of the same shape, 0 = open, 1 = closed.

    """
    return (np.asarray(x, dtype=np.float64) - open_value) / (closed_value - open_value)


def gripper_from_unit(n: np.ndarray, open_value: float, closed_value: float) -> np.ndarray:
    """
    Invert `gripper_to_unit`: 0 -> open value, 1 -> closed value.

    Args:
        n: unit gripper values (0 = open, 1 = closed), any shape.
        open_value: robot value when fully open.
        closed_value: robot value when fully closed.

    Returns:
        Robot values, same shape.

    """
    return open_value + np.asarray(n, dtype=np.float64) * (closed_value - open_value)


class EmbodimentAdapter:
    """
    Map one robot's joint states and commands to and from the unified layout.

    Inputs and outputs (robot units; see the module docstring for the axis letters):
    joint states ``names`` (N,) + ``positions`` (N,) -> state (S,); state (..., S) <-> unified
    (..., U); robot actions (..., D) <-> unified actions (..., U).

    Attributes:
        family: registered embodiment family name (set by the registry decorator).
        name: robot name from the config, e.g. 'aloha'.
        config: the validated robot config.
        state_names: joints read for the state, robot order (then base dims if in the state).
        action_names: commanded dims, robot order: joints, then base dims.
        dof: len(action_names).
        unified_dim: UNIFIED_DIM.
        state_slots, action_slots: unified index of each state / action entry.
        used_mask, delta_mask: (U,) bool; unified dims the robot commands / that are deltas.
        velocity_mask: (U,) bool; joint dims whose model actions are velocities (integrated
            into positions by the pipeline, see ``ActionMode.VELOCITY``).
        velocity_scale, velocity_limit: (U,) robot units/s per model unit and the joint's
            max_velocity on velocity dims (1 and inf elsewhere).
        lower, upper, max_velocity, is_velocity: (D,) arrays over action_names (base dims are
            velocities limited to +-max_velocity).
        cameras, commands, joint_state_topics: tuples of specs from the config.

    """

    family: ClassVar[str] = ''
    # Prompt used by make_example.
    EXAMPLE_PROMPT: ClassVar[str] = 'pick up the object'

    def __init__(self, config: RobotConfig) -> None:
        """
        Build the adapter after the family's config checks.

        Args:
            config: a validated robot config whose `embodiment` is this family.

        Raises:
            ValueError: if the config does not fit this family.

        """
        self.validate_config(config)
        self.config = config
        self.name = config.name
        self.unified_dim = UNIFIED_DIM
        joints, base = config.joints, config.base
        self.action_names = tuple(j.name for j in joints) + tuple(b.name for b in base)
        self.dof = len(self.action_names)
        state_base = base if config.base_in_state else ()
        self.state_names = tuple(j.state_name for j in joints) + tuple(b.name for b in state_base)
        self.action_slots = np.array([j.slot for j in joints] + [b.slot for b in base])  # (D,)
        self.state_slots = np.array([j.slot for j in joints] + [b.slot for b in state_base])
        self.used_mask = np.zeros(UNIFIED_DIM, dtype=bool)  # (U,)
        self.used_mask[self.action_slots] = True
        self.delta_mask = np.zeros(UNIFIED_DIM, dtype=bool)  # (U,)
        self.velocity_mask = np.zeros(UNIFIED_DIM, dtype=bool)  # (U,)
        self.velocity_scale = np.ones(UNIFIED_DIM)  # (U,) robot units/s per model unit
        self.velocity_limit = np.full(UNIFIED_DIM, np.inf)  # (U,) robot units/s
        for j in joints:
            self.delta_mask[j.slot] = j.action_mode == ActionMode.DELTA
            if j.action_mode == ActionMode.VELOCITY:
                self.velocity_mask[j.slot] = True
                self.velocity_scale[j.slot] = j.velocity_scale
                self.velocity_limit[j.slot] = j.max_velocity
        self.lower = np.array([j.lower for j in joints] + [-b.max_velocity for b in base])  # (D,)
        self.upper = np.array([j.upper for j in joints] + [b.max_velocity for b in base])  # (D,)
        self.max_velocity = np.array([j.max_velocity for j in joints]
                                     + [b.max_velocity for b in base])  # (D,)
        self.is_velocity = np.array([False] * len(joints) + [True] * len(base))  # (D,)
        # Base dims: max change of the velocity command per second; joints: none (inf).
        self.max_acceleration = np.array([math.inf] * len(joints)
                                         + [b.max_acceleration for b in base])  # (D,)
        self.cameras: tuple[CameraSpec, ...] = config.cameras
        self.commands: tuple[CommandSpec, ...] = config.commands
        self.joint_state_topics: tuple[JointStateTopic, ...] = config.joint_state_topics
        self._signs = self.joint_signs()  # (len(joints),)

    # ----- family hooks -------------------------------------------------------------------------

    @classmethod
    def validate_config(cls, config: RobotConfig) -> None:
        """
        Check family-specific rules; the generic rules ran when the YAML was loaded.

        Args:
            config: the robot config.

        Raises:
            ValueError: if the config does not fit this family.

        """
        if config.adapt_to_pi:
            raise config_error(config.source, 'adapt_to_pi', True,
                               "false for the embodiment '" + config.embodiment + "'",
                               "adapt_to_pi holds ALOHA's conventions; use embodiment: bimanual.")

    def joint_signs(self) -> np.ndarray:
        """Return the sign applied to each joint (robot order) on the way to unified (all +1)."""
        return np.ones(len(self.config.joints))

    def gripper_state_to_unified(self, spec: GripperSpec, x: np.ndarray) -> np.ndarray:
        """Convert the gripper state (robot units, any shape) to the unified value."""
        return self._to_unified_polarity(
            gripper_to_unit(x, spec.state_open_value, spec.state_closed_value))

    def gripper_state_from_unified(self, spec: GripperSpec, u: np.ndarray) -> np.ndarray:
        """Invert `gripper_state_to_unified`."""
        return gripper_from_unit(self._from_unified_polarity(u), spec.state_open_value,
                                 spec.state_closed_value)

    def gripper_action_from_unified(self, spec: GripperSpec, u: np.ndarray) -> np.ndarray:
        """Convert a unified gripper action to the command joint's units."""
        return gripper_from_unit(self._from_unified_polarity(u), spec.open_value,
                                 spec.closed_value)

    def gripper_action_to_unified(self, spec: GripperSpec, x: np.ndarray) -> np.ndarray:
        """Invert `gripper_action_from_unified` (e.g. to record training data)."""
        return self._to_unified_polarity(gripper_to_unit(x, spec.open_value, spec.closed_value))

    def _to_unified_polarity(self, n: np.ndarray) -> np.ndarray:
        c = self.config
        return c.unified_gripper_open + n * (c.unified_gripper_closed - c.unified_gripper_open)

    def _from_unified_polarity(self, u: np.ndarray) -> np.ndarray:
        c = self.config
        return (np.asarray(u, dtype=np.float64) - c.unified_gripper_open) / (
            c.unified_gripper_closed - c.unified_gripper_open)

    # ----- joint states -------------------------------------------------------------------------

    def state_from_joint_states(self, names: Sequence[str], positions: Sequence[float],
                                base_velocity: Sequence[float] | None = None) -> np.ndarray:
        """
        Build the robot-order state from joint states, matching joints by name.

        Args:
            names: joint names (N,), topic prefixes already applied; extra joints are ignored.
            positions: joint positions (N,) in the same order as ``names``.
            base_velocity: measured base velocities in base-dim order; used only when the
                config puts the base in the state (``base.in_state``).

        Returns:
            State (S,) float64 in ``state_names`` order.

        Raises:
            ValueError: on a length mismatch, a missing or duplicated joint, or NaN/Inf.

        """
        where = f"robot '{self.name}' ({self.config.source})"
        positions = np.asarray(positions, dtype=np.float64).reshape(-1)
        names = list(names)
        if len(names) != positions.shape[0]:
            raise ValueError(
                f'Joint state for {where} has {len(names)} names but {positions.shape[0]} '
                'positions; expected one position per name. Check the JointState publisher.')
        index: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in index and n in self.state_names:
                raise ValueError(
                    f"Joint '{n}' appears twice in the joint state for {where}; expected each "
                    'joint once. Check that two topics do not publish it without distinct '
                    'prefixes (joint_state_topics[].prefix).')
            index.setdefault(n, i)
        joint_names = self.state_names[:len(self.config.joints)]
        missing = [n for n in joint_names if n not in index]
        if missing:
            shown = names[:MAX_NAMES_IN_ERROR] + (['...'] if len(names) > MAX_NAMES_IN_ERROR
                                                  else [])
            raise ValueError(
                f'Joint state for {where} lacks the joints {missing}; received {shown}. Expected '
                f'{list(joint_names)}. Check the joint_state_topics and their prefixes '
                f'({[(t.topic, t.prefix) for t in self.joint_state_topics]}).')
        state = positions[[index[n] for n in joint_names]]
        bad = [(n, float(v)) for n, v in zip(joint_names, state) if not np.isfinite(v)]
        if bad:
            raise ValueError(
                f'Joint state for {where} has non-finite positions {bad}; expected finite '
                'numbers. Check the robot driver before running the policy.')
        if self.config.base_in_state:
            n_base = len(self.config.base)
            if base_velocity is None:
                raise ValueError(
                    f'{where} puts the base velocity in the state but base_velocity is None; '
                    f'pass {n_base} values ({[b.name for b in self.config.base]}).')
            vel = np.asarray(base_velocity, dtype=np.float64).reshape(-1)
            if vel.shape[0] != n_base or not np.all(np.isfinite(vel)):
                raise ValueError(
                    f'base_velocity for {where} is {vel.tolist()}; expected {n_base} finite '
                    f'values ({[b.name for b in self.config.base]}).')
            state = np.concatenate([state, vel])
        return state

    def split_joint_states(self, names: Sequence[str], positions: Sequence[float]
                           ) -> dict[str, tuple[list[str], list[float]]]:
        """
        Split prefixed joint states into per-topic messages (the inverse of adding prefixes).

        Args:
            names: joint names with topic prefixes, e.g. from `make_example`.
            positions: positions in the same order.

        Returns:
            {topic: (names without prefix, positions)} for every joint-state topic.

        Raises:
            ValueError: if a name matches no topic prefix.

        """
        out: dict[str, tuple[list[str], list[float]]] = {
            t.topic: ([], []) for t in self.joint_state_topics}
        # Longest prefix first, so '' (no prefix) only takes what no other topic claims.
        topics = sorted(self.joint_state_topics, key=lambda t: len(t.prefix), reverse=True)
        for name, pos in zip(names, positions):
            topic = next((t for t in topics if name.startswith(t.prefix)), None)
            if topic is None:
                prefixes = [t.prefix for t in self.joint_state_topics]
                raise ValueError(
                    f"Joint '{name}' matches no joint_state_topics prefix of robot "
                    f"'{self.name}' ({prefixes}); add a topic for it.")
            out[topic.topic][0].append(name[len(topic.prefix):])
            out[topic.topic][1].append(float(pos))
        return out

    # ----- unified conversions ------------------------------------------------------------------

    def _check_last(self, x: Any, size: int, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != size:
            raise ValueError(
                f"{what} for robot '{self.name}' has shape {x.shape}; expected the last axis to "
                f'be {size}. Use trim() on model outputs and state_from_joint_states() for '
                'states.')
        return x

    def state_to_unified(self, state: np.ndarray) -> np.ndarray:
        """
        Convert a robot state to the unified layout in model conventions.

        Args:
            state: (..., S) in ``state_names`` order, robot units.

        Returns:
            (..., U) float64; dims the robot lacks are 0.

        Raises:
            ValueError: if the last axis is not S.

        """
        x = self._check_last(state, len(self.state_names), 'state')
        out = np.zeros(x.shape[:-1] + (UNIFIED_DIM,))  # (..., U)
        for k, j in enumerate(self.config.joints):
            out[..., j.slot] = (self.gripper_state_to_unified(j.gripper, x[..., k]) if j.gripper
                                else self._signs[k] * x[..., k])
        n_joints = len(self.config.joints)
        out[..., self.state_slots[n_joints:]] = x[..., n_joints:]
        return out

    def state_from_unified(self, unified: np.ndarray) -> np.ndarray:
        """
        Invert `state_to_unified` (exact wherever the gripper conversion is invertible).

        Args:
            unified: (..., U).

        Returns:
            (..., S) robot state.

        """
        u = self._check_last(unified, UNIFIED_DIM, 'unified state')
        out = np.asarray(u[..., self.state_slots], dtype=np.float64).copy()  # (..., S)
        for k, j in enumerate(self.config.joints):
            out[..., k] = (self.gripper_state_from_unified(j.gripper, u[..., j.slot]) if j.gripper
                           else self._signs[k] * u[..., j.slot])
        return out

    def actions_from_unified(self, unified: np.ndarray) -> np.ndarray:
        """
        Convert unified actions (absolute, model conventions) to robot commands.

        Args:
            unified: (H, U) or (..., U), after trim / unnormalize / delta->absolute.

        Returns:
            (..., D) in ``action_names`` order, robot units (base dims: velocities). Not clamped;
            see `clamp_to_limits`.

        Raises:
            ValueError: if the last axis is not U.

        """
        u = self._check_last(unified, UNIFIED_DIM, 'unified actions')
        out = u[..., self.action_slots].copy()  # (..., D)
        for k, j in enumerate(self.config.joints):
            out[..., k] = (self.gripper_action_from_unified(j.gripper, u[..., j.slot]) if j.gripper
                           else self._signs[k] * u[..., j.slot])
        return out

    def actions_to_unified(self, actions: np.ndarray) -> np.ndarray:
        """
        Invert `actions_from_unified` (e.g. to write recorded commands in model conventions).

        Args:
            actions: (..., D) robot commands.

        Returns:
            (..., U); dims the robot lacks are 0.

        """
        x = self._check_last(actions, self.dof, 'actions')
        out = np.zeros(x.shape[:-1] + (UNIFIED_DIM,))  # (..., U)
        out[..., self.action_slots] = x
        for k, j in enumerate(self.config.joints):
            out[..., j.slot] = (self.gripper_action_to_unified(j.gripper, x[..., k]) if j.gripper
                                else self._signs[k] * x[..., k])
        return out

    def clamp_to_limits(self, actions: np.ndarray) -> np.ndarray:
        """
        Clip robot actions to the position limits (joints) and velocity limits (base).

        Args:
            actions: (..., D) robot commands.

        Returns:
            (..., D) clipped copy.

        """
        x = self._check_last(actions, self.dof, 'actions')
        return np.clip(x, self.lower, self.upper)

    # ----- cameras ------------------------------------------------------------------------------

    def model_images(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """
        Route camera images to the pi0 image slots.

        Args:
            images: {camera name: (h, w, 3) uint8}; cameras without a model slot are ignored.

        Returns:
            {key of MODEL_IMAGE_KEYS: image, or None when no camera feeds the slot or an optional
            camera is missing (the model masks it)}.

        Raises:
            ValueError: if a required camera is missing or an image is not HWC uint8 RGB.

        """
        out: dict[str, np.ndarray | None] = {key: None for key in MODEL_IMAGE_KEYS}
        for cam in self.cameras:
            if cam.model_slot is None:
                continue
            image = images.get(cam.name)
            if image is None:
                if cam.required:
                    raise ValueError(
                        f"Required camera '{cam.name}' ({cam.topic}) of robot '{self.name}' has "
                        f'no image; got {sorted(images)}. Check that the topic publishes.')
                continue
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != IMAGE_CHANNELS:
                raise ValueError(
                    f"Camera '{cam.name}' image has shape {image.shape} and dtype {image.dtype};"
                    f' expected (h, w, {IMAGE_CHANNELS}) uint8 RGB. Convert it first.')
            out[cam.model_key] = image
        return out

    # ----- examples -----------------------------------------------------------------------------

    def make_example(self, rng: np.random.Generator, *,
                     image_hw: tuple[int, int] | None = None) -> dict[str, Any]:
        """
        Build a random, valid observation as the ROS node would assemble it.

        Joint states come in a shuffled order and include the command joints of grippers whose
        state is read elsewhere (as a real JointState does); values lie within the limits.

        Args:
            rng: random generator.
            image_hw: image size (rows, columns); each camera's configured size by default.

        Returns:
            dict(names=list[str] (N,), positions=np.ndarray (N,), images={camera: (h, w, 3)
            uint8}, prompt=str, base_velocity=np.ndarray (n_base,) or None).

        """
        values: dict[str, float] = {}
        for j in self.config.joints:
            if j.gripper:
                g = j.gripper
                low, high = sorted((g.state_open_value, g.state_closed_value))
                values[g.state_joint] = float(rng.uniform(low, high))
                values.setdefault(j.name, float(rng.uniform(min(g.open_value, g.closed_value),
                                                            max(g.open_value, g.closed_value))))
            else:
                values[j.name] = float(rng.uniform(j.lower, j.upper))
        names = list(values)
        order = rng.permutation(len(names))
        images = {}
        for cam in self.cameras:
            h, w = image_hw if image_hw is not None else (cam.height, cam.width)
            images[cam.name] = rng.integers(0, 256, size=(h, w, IMAGE_CHANNELS), dtype=np.uint8)
        base = self.config.base
        base_velocity = (np.array([rng.uniform(-b.max_velocity, b.max_velocity) for b in base])
                         if base else None)
        return {
            'names': [names[i] for i in order],
            'positions': np.array([values[names[i]] for i in order]),
            'images': images,
            'prompt': self.EXAMPLE_PROMPT,
            'base_velocity': base_velocity,
        }
