"""
openpi's observation dicts, declared as data, and their mapping to a robot's observation.

openpi's clients send robot-specific dicts (pi0_model_spec.md §6.4): ALOHA sends ``state`` and
``images/<camera>`` as CHW uint8; DROID sends ``observation/<camera>`` as HWC uint8 and splits the
state into ``observation/joint_position`` and ``observation/gripper_position``. A format here is
such a layout; ``ROBOT_FORMATS`` says which format each robot speaks (and renames cameras whose
robot-config name differs from openpi's); a robot not in the table speaks the ALOHA layout with
its own camera names. ``ObservationMapping`` binds a format to a robot and converts both ways:
the server turns a request into the observation of ``Pi0Policy.infer``; the node's remote
backend turns its observation into the request. Values are in the robot's own units and order
(its robot config), as ``Pi0Policy.infer`` takes them. Optional extra keys pass through both
ways: ``noise`` and the Real-Time Chunking keys (``RTC_KEYS``: the previous chunk's leftover in
robot units, the delay d and the execution horizon s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import difflib
import enum
from types import MappingProxyType
from typing import Any

from embodiment_adapters import EmbodimentAdapter
import numpy as np
from pi0_policy.runtime.executor_base import RTC_DELAY_KEY, RTC_EXECUTE_KEY, RTC_LEFTOVER_KEY
from pi0_policy.runtime.pipeline import (
    IMAGES_KEY, NOISE_KEY, Observation, PROMPT_KEY, STATE_KEY)

# Optional Real-Time Chunking request keys (runtime.executor_base); servers that do not know them
# answer without guidance.
RTC_KEYS = (RTC_LEFTOVER_KEY, RTC_DELAY_KEY, RTC_EXECUTE_KEY)

# An openpi request / observation dict as it travels ({key: ndarray | str}).
OpenpiObservation = dict[str, Any]
RGB_CHANNELS = 3
UINT8_MAX = 255


class ImageLayout(enum.StrEnum):
    """How a format's client lays out camera images."""

    # (3, H, W), openpi's ALOHA clients.
    CHW = 'CHW'
    # (H, W, 3), openpi's DROID clients.
    HWC = 'HWC'


class StatePart(enum.StrEnum):
    """Which entries of the robot's state vector one state key carries (robot order)."""

    # The whole state vector.
    ALL = 'all'
    # The joints without a gripper spec.
    JOINTS = 'joints'
    # The gripper joints.
    GRIPPERS = 'grippers'


@dataclass(frozen=True)
class OpenpiFormat:
    """One of openpi's observation layouts."""

    # Format name ('aloha', 'droid').
    name: str
    # Request key of a camera image; '{camera}' is replaced by the camera's openpi name.
    image_key: str
    # Layout the format's clients send images in (the server accepts both).
    image_layout: ImageLayout
    # (request key, state part) in the order the parts are concatenated into the state.
    state_keys: tuple[tuple[str, StatePart], ...]
    # Request key of the instruction.
    prompt_key: str = PROMPT_KEY
    # openpi's policy_metadata['reset_pose'] for this format (sent on connect), if any.
    reset_pose: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RobotServing:
    """How one robot speaks openpi: a format and camera renames (robot name -> openpi name)."""

    # Key of FORMATS.
    format: str  # noqa: A003 (a field name, not the builtin)
    # Robot-config camera name -> openpi camera name; unlisted cameras keep their name.
    cameras: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


ALOHA = OpenpiFormat(
    name='aloha', image_key='images/{camera}', image_layout=ImageLayout.CHW,
    state_keys=(('state', StatePart.ALL),),
    # openpi's ALOHA configs: policy_metadata={'reset_pose': [0, -1.5, 1.5, 0, 0, 0]} (rad).
    reset_pose=(0.0, -1.5, 1.5, 0.0, 0.0, 0.0))
DROID = OpenpiFormat(
    name='droid', image_key='observation/{camera}', image_layout=ImageLayout.HWC,
    state_keys=(('observation/joint_position', StatePart.JOINTS),
                ('observation/gripper_position', StatePart.GRIPPERS)))
FORMATS: Mapping[str, OpenpiFormat] = MappingProxyType({f.name: f for f in (ALOHA, DROID)})
# Robots (config names) and the format they speak; any other robot speaks DEFAULT_SERVING.
ROBOT_FORMATS: Mapping[str, RobotServing] = MappingProxyType({
    'aloha': RobotServing('aloha'),
    'franka': RobotServing('droid'),
    'franka_droid': RobotServing('droid'),
})
DEFAULT_SERVING = RobotServing('aloha')


def get_format(name: str) -> OpenpiFormat:
    """
    Return a format by name.

    Raises:
        ValueError: unknown name; the message lists the formats and suggests the closest.

    """
    if name not in FORMATS:
        close = difflib.get_close_matches(str(name), list(FORMATS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f'Unknown openpi observation format {name!r}.{hint} Available: '
                         f'{sorted(FORMATS)}.')
    return FORMATS[name]


def serving_for(robot: str, format_name: str | None = None) -> RobotServing:
    """Return how a robot speaks openpi: ROBOT_FORMATS, else the default; ``format_name`` wins."""
    serving = ROBOT_FORMATS.get(robot, DEFAULT_SERVING)
    if format_name is not None:
        get_format(format_name)
        serving = RobotServing(format_name, serving.cameras)
    return serving


def to_hwc_uint8(image: Any, key: str) -> np.ndarray:
    """
    Parse a client's image as openpi does: CHW or HWC, uint8 or float in [0, 1].

    Returns:
        (H, W, 3) uint8, C-contiguous.

    Raises:
        ValueError: not a 3-channel image, or a float image with values outside [0, 1].

    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or RGB_CHANNELS not in (
            image.shape[0], image.shape[-1]):
        shape = getattr(image, 'shape', type(image).__name__)
        raise ValueError(f'{key!r} is {shape}; expected a (3, H, W) or (H, W, 3) image array.')
    if image.shape[-1] != RGB_CHANNELS:
        image = image.transpose(1, 2, 0)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind != 'f':
        raise ValueError(f'{key!r} has dtype {image.dtype}; expected uint8 (or float in [0, 1]).')
    if not (np.isfinite(image).all() and image.min(initial=0.0) >= 0.0
            and image.max(initial=0.0) <= 1.0):
        raise ValueError(f'{key!r} is a float image with values outside [0, 1] or NaN; send '
                         'uint8 or floats in [0, 1].')
    return np.ascontiguousarray((UINT8_MAX * image).astype(np.uint8))


class ObservationMapping:
    """A format bound to one robot: request <-> ``Pi0Policy.infer`` observation."""

    def __init__(self, adapter: EmbodimentAdapter, serving: RobotServing) -> None:
        """
        Bind a robot to its openpi format.

        Args:
            adapter: the robot's adapter (state names, grippers, cameras).
            serving: the robot's format and camera renames (``serving_for``).

        Raises:
            ValueError: unknown format, or a state the format cannot carry (e.g. DROID's two
                state keys with a base velocity in the state).

        """
        self.adapter = adapter
        self.format = get_format(serving.format)
        fmt = self.format
        unknown = sorted(set(serving.cameras) - {c.name for c in adapter.cameras})
        if unknown:
            raise ValueError(f'Camera renames {unknown} for robot {adapter.name!r} name no camera '
                             f'of its config; expected names from '
                             f'{[c.name for c in adapter.cameras]}.')
        # Robot camera name -> request key.
        self.image_keys = {c.name: fmt.image_key.format(camera=serving.cameras.get(c.name, c.name))
                           for c in adapter.cameras}
        grippers = [k for k, j in enumerate(adapter.config.joints) if j.gripper is not None]
        joints = [k for k, j in enumerate(adapter.config.joints) if j.gripper is None]
        parts = {StatePart.ALL: list(range(len(adapter.state_names))),
                 StatePart.JOINTS: joints, StatePart.GRIPPERS: grippers}
        # Request state key -> indices into the robot's state vector.
        self.state_indices = {key: np.array(parts[part], dtype=np.intp)
                              for key, part in fmt.state_keys}
        covered = sorted(i for idx in self.state_indices.values() for i in idx.tolist())
        if covered != list(range(len(adapter.state_names))):
            raise ValueError(
                f'openpi format {fmt.name!r} carries the state entries {covered} of robot '
                f'{adapter.name!r}, whose state has {len(adapter.state_names)} entries '
                f'{list(adapter.state_names)}; use a format that carries all of them (aloha).')
        self.required_cameras = {c.name for c in adapter.cameras if c.required}

    @property
    def keys(self) -> list[str]:
        """Return every key a request may carry (images, state, prompt)."""
        return [*self.image_keys.values(), *self.state_indices, self.format.prompt_key]

    def from_request(self, request: Any) -> Observation:
        """
        Turn a client's request into the observation of ``Pi0Policy.infer``.

        Args:
            request: the decoded dict; optional ``'noise'`` (T, A) passes through.

        Returns:
            ``{'images': {camera: (H, W, 3) uint8}, 'state': (S,), 'prompt': str}``.

        Raises:
            ValueError: not a dict, unknown or missing keys, bad images, a bad state or prompt.

        """
        if not isinstance(request, Mapping):
            raise ValueError(f'A request must be a dict with the keys {self.keys}; got '
                             f'{type(request).__name__}.')
        allowed = set(self.keys) | {NOISE_KEY, *RTC_KEYS}
        unknown = sorted(str(k) for k in request if k not in allowed)
        if unknown:
            raise ValueError(f'Request has unknown keys {unknown}; robot {self.adapter.name!r} '
                             f'({self.format.name} format) takes {self.keys} (+ optional '
                             f'{[NOISE_KEY, *RTC_KEYS]}).')
        missing = [k for k in (*self.state_indices, self.format.prompt_key) if k not in request]
        missing += [k for cam, k in self.image_keys.items()
                    if cam in self.required_cameras and k not in request]
        if missing:
            raise ValueError(f'Request lacks {missing}; robot {self.adapter.name!r} '
                             f'({self.format.name} format) takes {self.keys}.')
        state = np.zeros(len(self.adapter.state_names), dtype=np.float64)
        for key, indices in self.state_indices.items():
            part = np.asarray(request[key])
            if part.dtype.kind not in 'fiu' or part.size != indices.size:
                raise ValueError(
                    f'{key!r} has shape {part.shape} and dtype {part.dtype}; expected '
                    f'{indices.size} numbers {[self.adapter.state_names[i] for i in indices]}.')
            state[indices] = part.reshape(-1)
        prompt = request[self.format.prompt_key]
        if not isinstance(prompt, str):
            raise ValueError(f'{self.format.prompt_key!r} is {type(prompt).__name__}; expected '
                             'a str.')
        images = {cam: to_hwc_uint8(request[key], key)
                  for cam, key in self.image_keys.items() if key in request}
        observation = {IMAGES_KEY: images, STATE_KEY: state, PROMPT_KEY: prompt}
        if NOISE_KEY in request:
            # A writable copy: decoded arrays view the (read-only) frame.
            observation[NOISE_KEY] = np.array(request[NOISE_KEY], dtype=np.float32)
        if RTC_LEFTOVER_KEY in request:
            observation[RTC_LEFTOVER_KEY] = np.array(request[RTC_LEFTOVER_KEY], dtype=np.float64)
        for key in (RTC_DELAY_KEY, RTC_EXECUTE_KEY):
            if key in request:
                observation[key] = request[key]  # Pi0Policy.infer checks the values
        return observation

    def to_request(self, observation: Observation) -> OpenpiObservation:
        """
        Turn a ``Pi0Policy.infer`` observation into the request this format's clients send.

        Images are sent in the format's layout; a ``'noise'`` entry passes through.
        """
        state = np.asarray(observation[STATE_KEY], dtype=np.float64)
        request: OpenpiObservation = {key: state[indices] for key, indices
                                      in self.state_indices.items()}
        for cam, image in observation[IMAGES_KEY].items():
            image = np.asarray(image)
            if self.format.image_layout == ImageLayout.CHW:
                image = image.transpose(2, 0, 1)
            request[self.image_keys[cam]] = np.ascontiguousarray(image)
        request[self.format.prompt_key] = observation[PROMPT_KEY]
        if NOISE_KEY in observation:
            request[NOISE_KEY] = np.asarray(observation[NOISE_KEY], dtype=np.float32)
        if RTC_LEFTOVER_KEY in observation:
            request[RTC_LEFTOVER_KEY] = np.ascontiguousarray(observation[RTC_LEFTOVER_KEY],
                                                             dtype=np.float64)
        for key in (RTC_DELAY_KEY, RTC_EXECUTE_KEY):
            if key in observation:
                request[key] = int(observation[key])
        return request
