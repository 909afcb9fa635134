"""
The one place that assembles π0's input and output transforms for an embodiment.

Axis letters: C camera slots, L prompt tokens, S model state width, A model action width,
T action horizon, U unified width (18), N robot state length, F robot command dims (dof).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embodiment_adapters import ActionMode, EmbodimentAdapter, unified
import numpy as np

from pi0_policy.runtime import transforms
from pi0_policy.runtime.tokenizer import clean_prompt, PromptTokenizer, TokenizedPrompt

# Keys of an observation dict (Observation).
IMAGES_KEY = 'images'
STATE_KEY = 'state'
PROMPT_KEY = 'prompt'
NOISE_KEY = 'noise'

# How the model's actions relate to the state (a property of the checkpoint's training):
# 'robot' applies the robot config's per-joint ``action: delta | absolute``; 'absolute' treats
# every dim as absolute (no delta transform), e.g. openpi's pi0_aloha_sim
# (use_delta_joint_actions=False).
ACTION_MODE_ROBOT = 'robot'
ACTION_MODE_ABSOLUTE = 'absolute'
ACTION_MODES = (ACTION_MODE_ROBOT, ACTION_MODE_ABSOLUTE)

# An observation: {'images': {camera: (H, W, 3) uint8}, 'state': (N,), 'prompt': str,
# optionally 'noise': (T, A)}.
Observation = Mapping[str, Any]


class MissingInstructionError(ValueError):
    """The observation has no instruction and the checkpoint no default prompt."""


@dataclass(frozen=True)
class ModelInputs:
    """One observation in model space (numpy, unbatched)."""

    # (C, 3, H, W) float32 in [-1, 1]; black (-1) for empty slots.
    images: np.ndarray
    # (C,) bool, False for empty slots.
    image_masks: np.ndarray
    # (L,) int64 prompt tokens.
    tokens: np.ndarray
    # (L,) bool prompt mask.
    token_masks: np.ndarray
    # (S,) float32 normalized and zero-padded state.
    state: np.ndarray
    # (U,) float64 unified state before normalization (delta actions are relative to it).
    unified_state: np.ndarray
    # The tokenized prompt with its bookkeeping.
    prompt: TokenizedPrompt


def check_action_mode(action_mode: str) -> None:
    """
    Check an action mode name.

    Raises:
        ValueError: not one of ACTION_MODES.

    """
    if action_mode not in ACTION_MODES:
        raise ValueError(
            f'Unknown action_mode {action_mode!r}; expected one of {list(ACTION_MODES)}: '
            f'{ACTION_MODE_ROBOT!r} applies the per-joint delta/absolute actions of the robot '
            f'config, {ACTION_MODE_ABSOLUTE!r} is for checkpoints trained on absolute actions '
            '(e.g. openpi pi0_aloha_sim).')


class Pi0Pipeline:
    """
    Assemble the input and output transforms of π0 for one embodiment adapter.

    Inputs: ``{'images': {camera: (H, W, 3) uint8}, 'state': (N,) robot order, 'prompt': str}``.
    Outputs: (T, U) unified actions and (T, F) robot actions.
    """

    def __init__(
        self,
        adapter: EmbodimentAdapter,
        tokenizer: PromptTokenizer,
        normalizer: transforms.Normalizer,
        *,
        image_size: int,
        num_cameras: int,
        state_dim: int,
        action_dim: int,
        action_mode: str = ACTION_MODE_ROBOT,
        default_prompt: str | None = None,
    ) -> None:
        """
        Bind the transforms to an adapter and a model's sizes.

        Args:
            adapter: an ``embodiment_adapters.EmbodimentAdapter``.
            tokenizer: the prompt tokenizer.
            normalizer: the checkpoint's state/action statistics.
            image_size: side of the model's square input images (pixels).
            num_cameras: number of model camera slots C.
            state_dim: model state width S (>= U).
            action_dim: model action width A (>= U).
            action_mode: one of ACTION_MODES: 'robot' (the adapter's delta_mask) or 'absolute'
                (no delta→absolute transform).
            default_prompt: instruction used when an observation's prompt is empty (the
                checkpoint's default prompt); None: an empty prompt is an error.

        Raises:
            ValueError: the model is narrower than the unified layout, cameras share a slot or
                name one outside MODEL_IMAGE_KEYS, a required camera maps to a slot the model
                does not have (optional ones there are left unused: ``unused_cameras``), or an
                unknown action_mode.

        """
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.image_size = int(image_size)
        self.num_cameras = int(num_cameras)
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.unified_dim = int(adapter.unified_dim)
        if min(self.state_dim, self.action_dim) < self.unified_dim:
            raise ValueError(
                f'Model state/action width ({self.state_dim}/{self.action_dim}) is smaller than '
                f'the unified width {self.unified_dim} of embodiment {adapter.name!r}; use a '
                f'model with state_dim and action_dim >= {self.unified_dim}.')
        slotted = [c for c in adapter.cameras if c.model_slot is not None]
        slots = [c.model_slot for c in slotted]
        bad = [s for s in slots if not 0 <= s < len(unified.MODEL_IMAGE_KEYS)]
        if bad or len(set(slots)) != len(slots):
            raise ValueError(
                f'Embodiment {adapter.name!r} maps cameras to model slots {slots}; expected '
                f'distinct slots in 0..{len(unified.MODEL_IMAGE_KEYS) - 1}. Fix model_slot in '
                'the robot config.')
        # A model with fewer slots (e.g. trained on the base camera only) leaves the cameras of
        # its missing slots unused; a required one there is a config the model cannot serve.
        beyond = [c for c in slotted if c.model_slot >= self.num_cameras]
        required = [c.name for c in beyond if c.required]
        if required:
            raise ValueError(
                f'Embodiment {adapter.name!r} requires cameras {required} in model slots '
                f'{[c.model_slot for c in beyond if c.required]}, but the model has '
                f'{self.num_cameras} camera slot(s). Use a checkpoint with more camera slots, '
                'or make those cameras optional (required: false) in the robot config.')
        # Camera names the model does not use (their images are ignored).
        self.unused_cameras = tuple(c.name for c in beyond)
        self._cameras = {c.name: c for c in adapter.cameras}
        check_action_mode(action_mode)
        self.action_mode = action_mode
        # (U,) unified dims the model outputs as offsets from the state.
        self.delta_mask = np.asarray(adapter.delta_mask, dtype=bool).copy()
        if action_mode == ACTION_MODE_ABSOLUTE:
            self.delta_mask[:] = False
        self.delta_mask.flags.writeable = False
        # (U,) unified dims the model outputs as velocities, integrated at the chunk rate.
        self.velocity_mask = np.asarray(adapter.velocity_mask, dtype=bool).copy()
        self.velocity_mask.flags.writeable = False
        if action_mode == ACTION_MODE_ABSOLUTE and self.velocity_mask.any():
            names = [j.name for j in adapter.config.joints
                     if j.action_mode == ActionMode.VELOCITY]
            raise ValueError(
                f'action_mode {ACTION_MODE_ABSOLUTE!r} treats every action as an absolute '
                f'position, but robot {adapter.name!r} ({adapter.config.source}) declares the '
                f'joints {names} as action: velocity. Use action_mode {ACTION_MODE_ROBOT!r} '
                'for a velocity checkpoint (e.g. openpi pi0_droid), or a robot config with '
                'absolute actions for an absolute-position checkpoint.')
        # Seconds between two actions of a chunk: the rate of the robot's training data.
        self.chunk_dt = 1.0 / float(adapter.config.control_rate_hz)
        if default_prompt is not None and not clean_prompt(default_prompt).strip():
            raise ValueError(f'default_prompt {default_prompt!r} is blank; pass None for no '
                             'default or an instruction such as "Transfer cube".')
        self.default_prompt = default_prompt

    def prepare(self, observation: Observation) -> ModelInputs:
        """
        Turn an observation into model inputs.

        Raises:
            ValueError: a missing key, a missing required camera, an unknown camera, a bad image,
                a state of the wrong length or with NaN/inf values.

        """
        # Order: state_to_unified → normalize → pad | slots → resize_with_pad → [-1,1] | tokenize
        required = [IMAGES_KEY, STATE_KEY, PROMPT_KEY]
        missing = [k for k in required if k not in observation]
        if missing:
            raise ValueError(
                f'Observation lacks {missing}; expected keys {required} '
                f'(got {sorted(observation)}).')
        robot_state = self._check_state(observation[STATE_KEY])
        unified_state = np.asarray(self.adapter.state_to_unified(robot_state), np.float64)  # (U,)
        state = unified.pad(self.normalizer.normalize_state(unified_state), self.state_dim)
        images, image_masks = self._images(observation[IMAGES_KEY])
        prompt = self.tokenizer(self.instruction(observation[PROMPT_KEY]))
        return ModelInputs(
            images=images, image_masks=image_masks, tokens=prompt.tokens,
            token_masks=prompt.mask, state=state.astype(np.float32),
            unified_state=unified_state, prompt=prompt)

    def finish(
        self, model_actions: np.ndarray, inputs: ModelInputs,
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Turn the model's (T, A) output into (T, U) unified and (T, F) robot actions.

        Args:
            model_actions: (T, A) normalized, padded actions from the model.
            inputs: the inputs of the same inference (for the unified state).

        Returns:
            (unified (T, U) float64, robot (T, F) float64); velocity dims hold the integrated
            position targets in both.

        """
        # Order: trim → unnormalize → delta→absolute → velocity→position →
        # adapter.actions_from_unified
        actions = unified.trim(np.asarray(model_actions, np.float64), self.unified_dim)
        actions = self.normalizer.unnormalize_actions(actions)
        actions = transforms.delta_to_absolute(actions, inputs.unified_state, self.delta_mask)
        actions = transforms.integrate_velocities(
            actions, inputs.unified_state, self.velocity_mask, scale=self.adapter.velocity_scale,
            limit=self.adapter.velocity_limit, dt=self.chunk_dt)
        robot = np.asarray(self.adapter.actions_from_unified(actions), np.float64)
        return actions, robot

    def instruction(self, prompt: Any) -> str:
        """
        Return the prompt to tokenize: the given one, or the default when it is blank.

        Raises:
            TypeError: prompt is not a str.
            MissingInstructionError: the prompt is blank and there is no default prompt; the
                model is never fed an empty prompt.

        """
        if not isinstance(prompt, str):
            raise TypeError(
                f'prompt must be a str, got {type(prompt).__name__}; pass the instruction text.')
        if clean_prompt(prompt).strip():
            return prompt
        if self.default_prompt is not None:
            return self.default_prompt
        raise MissingInstructionError(
            f'No instruction: the prompt is {prompt!r} and the checkpoint has no default prompt. '
            'Send one (node: the prompt parameter, ~/instruction or ~/set_instruction), or give '
            'the checkpoint a default ("default_prompt" in its config.json, or the '
            'default_prompt option); an empty prompt is never fed to the model.')

    def to_model_actions(self, robot_actions: np.ndarray, inputs: ModelInputs) -> np.ndarray:
        """
        Turn (R, F) robot actions back into (R, A) model space: the inverse of ``finish``.

        Used for the leftover of the previous chunk in Real-Time Chunking: deltas are taken
        relative to the state of ``inputs`` (the new observation), as the new chunk's are.

        Args:
            robot_actions: (R, F) actions in robot order and units.
            inputs: the inputs of the inference the actions are for (for the unified state).

        Returns:
            (R, A) float32 normalized actions, zero-padded to the model action width.

        """
        # Order: adapter.actions_to_unified → absolute→delta → normalize → pad
        actions = np.asarray(self.adapter.actions_to_unified(robot_actions), np.float64)
        actions = transforms.absolute_to_delta(actions, inputs.unified_state, self.delta_mask)
        actions = self.normalizer.normalize_actions(actions)
        return unified.pad(actions, self.action_dim).astype(np.float32)

    def _check_state(self, state: Any) -> np.ndarray:
        """Validate the robot-order state vector."""
        names = tuple(self.adapter.state_names)
        try:
            array = np.asarray(state, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f'State must be a numeric vector of {len(names)} values {list(names)}; got '
                f'{type(state).__name__} that numpy cannot convert ({e}).') from e
        if array.shape != (len(names),):
            raise ValueError(
                f'State has shape {array.shape}, expected ({len(names)},) in the robot order of '
                f'embodiment {self.adapter.name!r}: {list(names)}.')
        bad = ~np.isfinite(array)
        if bad.any():
            raise ValueError(
                f'State has non-finite values at {[names[i] for i in np.flatnonzero(bad)]}: '
                f'{array.tolist()}; check the joint state source (holding until it is valid).')
        return array

    def _images(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Place the cameras in the model slots: (C, 3, H, W) float32 and (C,) bool masks."""
        if not isinstance(images, Mapping):
            raise ValueError(
                f'observation[{IMAGES_KEY!r}] must map camera names to (H, W, 3) uint8 images, '
                f'got {type(images).__name__}.')
        unknown = sorted(set(images) - set(self._cameras))
        if unknown:
            raise ValueError(
                f'Unknown cameras {unknown} for embodiment {self.adapter.name!r}; expected names '
                f'from {sorted(self._cameras)} (see its robot config).')
        # The adapter routes cameras to slot keys and rejects a missing required camera.
        routed = self.adapter.model_images(images)  # {slot key: (h, w, 3) uint8 | None}
        size = self.image_size
        # Every slot is written below: resized in place, or black when the camera is absent.
        out = np.empty((self.num_cameras, transforms.RGB_CHANNELS, size, size),
                       dtype=np.float32)  # (C, 3, H, W)
        masks = np.zeros(self.num_cameras, dtype=bool)  # (C,)
        for slot, key in enumerate(unified.MODEL_IMAGE_KEYS[:self.num_cameras]):
            image = routed.get(key)
            if image is None:
                out[slot] = transforms.BLACK_MODEL_VALUE
                continue
            image = transforms.check_rgb_image(image, f'image slot {key!r}')
            transforms.resize_with_pad_to_model(image, size, size, out=out[slot])
            masks[slot] = True
        return out, masks
