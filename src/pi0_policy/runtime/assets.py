"""
What a checkpoint says about how to run it, checked against the robot config before inference.

- Known openpi assets (`KNOWN_ASSETS`): the norm-stats asset id names the training data, which
  fixes facts the weights cannot tell: openpi's ``droid`` asset (pi0_droid, pi0_fast_droid)
  outputs 7 joint VELOCITIES + a gripper position at 15 Hz; ``pi0_aloha_sim`` was trained on
  absolute joints with the default prompt "Transfer cube". `check_known_asset` refuses a robot
  config that would execute such a checkpoint with other semantics.
- The default prompt (`read_default_prompt`): the instruction used when none is given. openpi
  sets it in its train configs (``default_prompt``), which a checkpoint folder does not carry, so
  this package reads it from the top-level ``"default_prompt"`` string of the checkpoint's
  ``config.json`` (add it by hand to a converted checkpoint), falling back to `KNOWN_ASSETS`.
- The action statistics (`check_action_statistics`): delta and velocity actions have means near
  zero, absolute actions have means near the state's; a dim whose statistics contradict the
  robot config's ``action`` mode gets a warning that names the dim and what to set.

Axis letters: U unified width.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import logging
from pathlib import Path

from embodiment_adapters import ActionMode, EmbodimentAdapter
import numpy as np

from pi0_policy.runtime.transforms import Normalizer

_LOG = logging.getLogger(__name__)

# Checkpoint file holding the architecture (openpi converter, LeRobot) and, optionally, the
# default prompt under DEFAULT_PROMPT_KEY.
CONFIG_FILE = 'config.json'
DEFAULT_PROMPT_KEY = 'default_prompt'
# Relative tolerance on the chunk rate a known asset was recorded at.
RATE_TOLERANCE = 1e-3
# Statistics check: a mean within ZERO_FRACTION of the joint range counts as "near zero"; a
# hypothesis is preferred when it explains the mean PREFER_FACTOR times better than the other.
ZERO_FRACTION = 0.1
PREFER_FACTOR = 4.0


@dataclass(frozen=True)
class AssetFacts:
    """What openpi's training config fixes for checkpoints with one norm-stats asset id."""

    # openpi train configs that use the asset (for messages).
    configs: tuple[str, ...]
    # Action mode of the arm joints the checkpoint was trained with (grippers are absolute).
    joint_action: ActionMode | None = None
    # Rate of the training data (Hz), i.e. the spacing of the chunk's actions; None: any.
    rate_hz: float | None = None
    # Default prompt of the train config; None when it has none or several configs differ.
    default_prompt: str | None = None
    # Robot config of this package that fits.
    robot: str | None = None


# Facts from openpi's src/openpi/training/config.py, docs/norm_stats.md and examples/droid.
KNOWN_ASSETS: dict[str, AssetFacts] = {
    'droid': AssetFacts(configs=('pi0_droid', 'pi0_fast_droid'),
                        joint_action=ActionMode.VELOCITY, rate_hz=15.0, robot='franka_droid'),
    'lerobot/aloha_sim_transfer_cube_human': AssetFacts(
        configs=('pi0_aloha_sim',), joint_action=ActionMode.ABSOLUTE,
        default_prompt='Transfer cube', robot='aloha'),
}


def known_asset(asset_id: str | None) -> AssetFacts | None:
    """Return the facts of a known openpi asset id, or None."""
    return None if asset_id is None else KNOWN_ASSETS.get(asset_id)


def check_known_asset(asset_id: str | None, adapter: EmbodimentAdapter,
                      delta_mask: np.ndarray) -> None:
    """
    Refuse a robot config that would run a known checkpoint with the wrong action semantics.

    Args:
        asset_id: the norm-stats asset id in use (None: nothing to check).
        adapter: the robot's adapter.
        delta_mask: (U,) the pipeline's delta dims (all False in action_mode 'absolute').

    Raises:
        ValueError: the arm joints' action modes or the robot's control_rate_hz differ from what
            the checkpoint was trained with; the message says which robot config fits.

    """
    facts = known_asset(asset_id)
    if facts is None:
        return
    config = adapter.config
    fix = (f"Use robot '{facts.robot}' (config/robots/{facts.robot}.yaml)" if facts.robot
           else 'Fix the robot config')
    trained = f'{asset_id!r} ({", ".join(facts.configs)})'
    if facts.joint_action is not None:
        wrong = []
        for joint in config.joints:
            if joint.gripper is not None:
                continue
            mode = (ActionMode.VELOCITY if adapter.velocity_mask[joint.slot]
                    else ActionMode.DELTA if delta_mask[joint.slot] else ActionMode.ABSOLUTE)
            if mode != facts.joint_action:
                wrong.append(f'{joint.name}: {mode.value}')
        if wrong:
            raise ValueError(
                f'Norm stats asset {trained} was trained on {facts.joint_action.value} joint '
                f'actions, but robot {adapter.name!r} ({config.source}) would execute them as '
                f'{wrong}. {fix}, or set action: {facts.joint_action.value} on its arm '
                'joints; executing these actions with other semantics moves the robot wildly.')
    if facts.rate_hz is not None and not np.isclose(config.control_rate_hz, facts.rate_hz,
                                                    rtol=RATE_TOLERANCE):
        raise ValueError(
            f'Norm stats asset {trained} was recorded at {facts.rate_hz} Hz, but robot '
            f'{adapter.name!r} ({config.source}) has control_rate_hz {config.control_rate_hz}: '
            f'its chunks would play at the wrong speed. {fix}, or set control_rate_hz: '
            f'{facts.rate_hz}.')


def read_default_prompt(checkpoint_dir: str | Path | None,
                        asset_id: str | None = None) -> tuple[str | None, str]:
    """
    Return a checkpoint's default prompt and where it came from.

    Looks at the top-level ``"default_prompt"`` string of ``<checkpoint_dir>/config.json``, then
    at `KNOWN_ASSETS` for ``asset_id``.

    Args:
        checkpoint_dir: the checkpoint folder, or None (tiny random model: no default).
        asset_id: the norm-stats asset id in use.

    Returns:
        (prompt or None, source description).

    Raises:
        ValueError: config.json has a ``default_prompt`` that is not a non-empty string.

    """
    if checkpoint_dir is not None:
        file = Path(checkpoint_dir) / CONFIG_FILE
        data = None
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f'Cannot read {str(file)!r}: {e}; fix or remove it.') from e
        if isinstance(data, dict) and DEFAULT_PROMPT_KEY in data:
            prompt = data[DEFAULT_PROMPT_KEY]
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(
                    f'{str(file)!r} has {DEFAULT_PROMPT_KEY!r} = {prompt!r}; expected a '
                    'non-empty string such as "Transfer cube", or remove the key.')
            return prompt, f'{file} ({DEFAULT_PROMPT_KEY})'
    facts = known_asset(asset_id)
    if facts is not None and facts.default_prompt is not None:
        return facts.default_prompt, f'openpi {", ".join(facts.configs)} (asset {asset_id!r})'
    return None, 'none'


def check_action_statistics(normalizer: Normalizer, adapter: EmbodimentAdapter,
                            delta_mask: np.ndarray) -> list[str]:
    """
    Compare the checkpoint's action statistics with the robot config's action modes.

    For each arm joint the statistics cover, the action mean is compared with two hypotheses:
    absolute actions (mean near the state's mean) and offsets/velocities (mean near zero),
    measured in units of the joint's range ``upper - lower``. Dims where both hypotheses predict
    about the same (state mean near zero) are not judged; grippers are skipped.

    Args:
        normalizer: the loaded statistics (identity: nothing to check).
        adapter: the robot's adapter (modes, ranges, slots).
        delta_mask: (U,) the pipeline's delta dims.

    Returns:
        One warning per contradicting dim, naming the joint, the numbers and what to set.

    """
    actions, state = normalizer.actions, normalizer.state
    if actions is None:
        return []
    warnings = []
    # Unified values carry the joint's sign (ALOHA flips), which the comparisons do not depend on.
    for joint in adapter.config.joints:
        slot = joint.slot
        if joint.gripper is not None or slot >= actions.width:
            continue
        span = max(joint.upper - joint.lower, np.finfo(float).eps)
        mean_a = float(actions.mean[slot])
        d_zero = abs(mean_a) / span
        relative = bool(delta_mask[slot] or adapter.velocity_mask[slot])
        declared = ('velocity' if adapter.velocity_mask[slot]
                    else 'delta' if delta_mask[slot] else 'absolute')
        if state is not None and slot < state.width:
            mean_s = float(state.mean[slot])
            d_abs = abs(mean_a - mean_s) / span
            if abs(mean_s) / span < ZERO_FRACTION:
                continue  # both hypotheses predict a mean near zero
            looks_absolute = d_abs * PREFER_FACTOR < d_zero and d_zero > ZERO_FRACTION
            looks_relative = d_zero * PREFER_FACTOR < d_abs and d_abs > ZERO_FRACTION
            numbers = (f'action mean {mean_a:.3g}, state mean {mean_s:.3g}, joint range '
                       f'{span:.3g}')
        else:
            looks_absolute, looks_relative = d_zero > ZERO_FRACTION, False
            numbers = f'action mean {mean_a:.3g}, joint range {span:.3g}, no state statistics'
        if relative and looks_absolute:
            warnings.append(
                f"Joint '{joint.name}' (unified dim {slot}) is declared action: {declared}, but "
                f'the checkpoint action statistics look ABSOLUTE ({numbers}): set action: '
                "absolute for it (or action_mode 'absolute'), or use the norm stats the "
                'checkpoint was trained with.')
        elif not relative and looks_relative:
            warnings.append(
                f"Joint '{joint.name}' (unified dim {slot}) is declared action: {declared}, but "
                f'the checkpoint action statistics look like OFFSETS or VELOCITIES (mean near '
                f'zero: {numbers}): set action: delta (or velocity for a joint-velocity '
                "checkpoint such as openpi's DROID) and action_mode 'robot'.")
    return warnings
