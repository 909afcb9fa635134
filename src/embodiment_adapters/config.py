"""
Load and validate robot configs (``config/robots/<robot>.yaml``) into frozen dataclasses.

A bare robot name such as ``'aloha'`` is looked up as ``<name>.yaml`` in these folders, first hit
wins (`robot_config_dirs` returns the list):

1. every folder in the environment variable ``PI0_ROBOT_CONFIG_PATH`` (``os.pathsep``-separated),
   so a user can override or add robots without rebuilding;
2. the source tree, ``<repository root>/config/robots`` (when running from a checkout);
3. the package share folder ``share/pi0_policy/config/robots`` found by ``ament_index_python``
   (when importable);
4. ``<prefix>/share/pi0_policy/config/robots`` for each entry of ``AMENT_PREFIX_PATH``;
5. ``<sys.prefix>/share/pi0_policy/config/robots`` (a plain pip install).

Anything that looks like a path (contains a path separator or ends in ``.yaml``/``.yml``) is
loaded as a file. Every field is checked on load; errors name the file, the field, the value given,
what was expected and what to do. The YAML schema is documented in ``config/robots/README.md``.
"""

import dataclasses
import difflib
import enum
import math
import os
import pathlib
import sys
from typing import Any

from embodiment_adapters.specs import (
    ActionMode, BaseAxis, BaseDimSpec, CameraSpec, CommandSpec, CommandType,
    DEFAULT_IMAGE_HEIGHT, DEFAULT_IMAGE_WIDTH, GripperSpec, JointSpec, JointStateTopic,
    RobotConfig, UNIFIED_GRIPPER_CLOSED, UNIFIED_GRIPPER_OPEN, VELOCITY_COMMANDS)
from embodiment_adapters.unified import BASE_DIMS, MODEL_IMAGE_KEYS, UNIFIED_DIM
import yaml

# The specs are part of this module's interface (`from embodiment_adapters.config import ...`).
__all__ = [
    'ActionMode', 'available_robots', 'BaseAxis', 'BaseDimSpec', 'CameraSpec', 'CommandSpec',
    'CommandType', 'config_error', 'find_robot_config', 'GripperSpec', 'JointSpec',
    'JointStateTopic', 'load_robot_config', 'parse_robot_config', 'robot_config_dirs',
    'RobotConfig', 'VELOCITY_COMMANDS',
]

# Environment variable with extra robot-config folders, searched first.
CONFIG_PATH_ENV = 'PI0_ROBOT_CONFIG_PATH'
# ROS package whose share folder holds the installed robot configs.
SHARE_PACKAGE = 'pi0_policy'
# Robot configs relative to the package share folder and to the repository root.
ROBOTS_SUBDIR = pathlib.Path('config') / 'robots'
CONFIG_SUFFIXES = ('.yaml', '.yml')
# Repository root when this module runs from the source tree (src/embodiment_adapters/config.py).
SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[2]
_TOP_KEYS = {
    'name': False, 'embodiment': True, 'description': False, 'control_rate_hz': True,
    'norm_stats_asset_id': False, 'adapt_to_pi': False, 'unified_gripper': False,
    'joint_state_topics': True, 'joints': True, 'base': False, 'cameras': True, 'commands': True,
    'start_pose': False,
}
_JOINT_KEYS = {
    'name': True, 'slot': True, 'lower': True, 'upper': True, 'max_velocity': True,
    'action': True, 'gripper': False, 'velocity_scale': False,
}
_GRIPPER_KEYS = {
    'open_value': True, 'closed_value': True, 'state_joint': False, 'state_open_value': False,
    'state_closed_value': False,
}
_UNIFIED_GRIPPER_KEYS = {'open_value': True, 'closed_value': True}
_BASE_KEYS = {'in_state': False, 'dims': True}
_BASE_DIM_KEYS = {'name': True, 'slot': True, 'axis': True, 'max_velocity': True,
                  'max_acceleration': False}
_CAMERA_KEYS = {
    'name': True, 'topic': True, 'model_slot': True, 'compressed': False, 'required': False,
    'height': False, 'width': False,
}
_TOPIC_KEYS = {'topic': True, 'prefix': False}
_COMMAND_KEYS = {'type': True, 'topic': True, 'names': True, 'strip_prefix': False}


def config_error(source: str, field: str, value: Any, expected: str, fix: str) -> ValueError:
    """
    Build the one error shape used for bad robot configs.

    Args:
        source: file the config came from.
        field: dotted field path, e.g. 'joints[3].slot'.
        value: the value found.
        expected: what the field must be.
        fix: what the user should do.

    Returns:
        A ValueError with a message naming all of the above.

    """
    return ValueError(
        f"Robot config {source}: field '{field}' has the value {value!r}; expected {expected}. "
        f'{fix}')


class _Reader:
    """Typed access to one YAML mapping with error messages that name the file and field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, value: Any, expected: str,
             fix: str = 'Fix the robot config.') -> ValueError:
        return config_error(self.source, field, value, expected, fix)

    def mapping(self, value: Any, field: str, keys: dict[str, bool]) -> dict:
        """Check that ``value`` is a mapping with only known keys and all required ones."""
        if not isinstance(value, dict):
            raise self.fail(field or '<top level>', value, 'a mapping')
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"Did you mean '{close[0]}'? " if close else ''
                raise self.fail(
                    _join(field, str(key)), value[key], f'one of the known keys {sorted(keys)}',
                    f'{hint}Remove or rename the key.')
        for key, required in keys.items():
            if required and key not in value:
                raise self.fail(_join(field, key), None, 'a value (the field is required)',
                                'Add the field.')
        return value

    def sequence(self, value: Any, field: str, *, allow_empty: bool = False) -> list:
        if not isinstance(value, list) or (not value and not allow_empty):
            raise self.fail(field, value, 'a list' if allow_empty else 'a non-empty list')
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field, value, 'a non-empty string')
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, value, 'true or false')
        return value

    def number(self, value: Any, field: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value) or (positive and value <= 0):
            raise self.fail(field, value, 'a finite number' + (' > 0' if positive else ''))
        return float(value)

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, value, f'an integer in [{low}, {high}]')
        return value

    def choice(self, value: Any, field: str, enum_type: type[enum.StrEnum]) -> Any:
        options = [member.value for member in enum_type]
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ''
            raise self.fail(field, value, f'one of {options}', f'{hint}Fix the robot config.')
        return enum_type(value)


def _join(prefix: str, key: str) -> str:
    return f'{prefix}.{key}' if prefix else key


def parse_robot_config(data: Any, *, source: str = '<memory>', name: str | None = None
                       ) -> RobotConfig:
    """
    Validate a parsed YAML document and build a `RobotConfig`.

    Args:
        data: the YAML document (a mapping).
        source: where it came from, used in error messages.
        name: robot name used when the document has no `name` field.

    Returns:
        The frozen config.

    Raises:
        ValueError: on any unknown key, missing field, wrong type or inconsistent value.

    """
    r = _Reader(source)
    top = r.mapping(data, '', _TOP_KEYS)
    robot_name = r.string(top['name'], 'name') if 'name' in top else name
    if robot_name is None:
        raise r.fail('name', None, 'a robot name', 'Add a `name` field.')
    joints = tuple(_parse_joint(r, j, f'joints[{i}]')
                   for i, j in enumerate(r.sequence(top['joints'], 'joints')))
    base_in_state, base = False, ()
    if top.get('base') is not None:
        base_map = r.mapping(top['base'], 'base', _BASE_KEYS)
        base_in_state = r.boolean(base_map.get('in_state', False), 'base.in_state')
        base = tuple(_parse_base_dim(r, d, f'base.dims[{i}]')
                     for i, d in enumerate(r.sequence(base_map['dims'], 'base.dims')))
    cameras = tuple(_parse_camera(r, c, f'cameras[{i}]')
                    for i, c in enumerate(r.sequence(top['cameras'], 'cameras')))
    topics = tuple(_parse_topic(r, t, f'joint_state_topics[{i}]') for i, t in enumerate(
        r.sequence(top['joint_state_topics'], 'joint_state_topics')))
    commands = tuple(_parse_command(r, c, f'commands[{i}]')
                     for i, c in enumerate(r.sequence(top['commands'], 'commands')))
    adapt_to_pi = r.boolean(top.get('adapt_to_pi', False), 'adapt_to_pi')
    g_open, g_closed = UNIFIED_GRIPPER_OPEN, UNIFIED_GRIPPER_CLOSED
    if 'unified_gripper' in top:
        ug = r.mapping(top['unified_gripper'], 'unified_gripper', _UNIFIED_GRIPPER_KEYS)
        g_open = r.number(ug['open_value'], 'unified_gripper.open_value')
        g_closed = r.number(ug['closed_value'], 'unified_gripper.closed_value')
        if g_open == g_closed:
            raise r.fail('unified_gripper.closed_value', g_closed,
                         f'a value different from open_value ({g_open})')
        if adapt_to_pi:
            raise r.fail('unified_gripper', top['unified_gripper'], 'no value with adapt_to_pi',
                         'adapt_to_pi fixes the unified gripper convention; remove one of them.')
    asset = top.get('norm_stats_asset_id')
    config = RobotConfig(
        name=robot_name,
        embodiment=r.string(top['embodiment'], 'embodiment'),
        source=source,
        joints=joints,
        base=base,
        base_in_state=base_in_state,
        cameras=cameras,
        joint_state_topics=topics,
        commands=commands,
        control_rate_hz=r.number(top['control_rate_hz'], 'control_rate_hz', positive=True),
        norm_stats_asset_id=None if asset is None else r.string(asset, 'norm_stats_asset_id'),
        adapt_to_pi=adapt_to_pi,
        unified_gripper_open=g_open,
        unified_gripper_closed=g_closed,
        description=str(top.get('description', '')),
    )
    _check_consistency(r, config)
    if top.get('start_pose') is not None:  # after the joint names are known to be unique
        config = dataclasses.replace(
            config, start_pose=_parse_start_pose(r, top['start_pose'], joints))
    return config


def _parse_start_pose(r: _Reader, value: Any, joints: tuple[JointSpec, ...]) -> tuple[float, ...]:
    """Read ``start_pose: {joint name: position}``: every joint once, within its limits."""
    names = [j.name for j in joints]
    pose = r.mapping(value, 'start_pose', {name: True for name in names})
    out = []
    for j in joints:
        field = f'start_pose.{j.name}'
        position = r.number(pose[j.name], field)
        if not j.lower <= position <= j.upper:
            raise r.fail(field, position, f'a position within the joint limits [{j.lower}, '
                         f'{j.upper}]', 'Fix the start pose or the joint limits.')
        out.append(position)
    return tuple(out)


def _parse_joint(r: _Reader, value: Any, field: str) -> JointSpec:
    j = r.mapping(value, field, _JOINT_KEYS)
    name = r.string(j['name'], f'{field}.name')
    lower = r.number(j['lower'], f'{field}.lower')
    upper = r.number(j['upper'], f'{field}.upper')
    if lower > upper:
        raise r.fail(f'{field}.lower', lower, f'a value <= upper ({upper}) for joint {name!r}',
                     'Swap or fix the limits.')
    gripper = None
    if j.get('gripper') is not None:
        gripper = _parse_gripper(r, j['gripper'], f'{field}.gripper', name, lower, upper)
    action_mode = r.choice(j['action'], f'{field}.action', ActionMode)
    if action_mode == ActionMode.VELOCITY and gripper is not None:
        raise r.fail(f'{field}.action', action_mode.value, "'absolute' or 'delta' for a gripper",
                     'Velocity actions are for arm joints (DROID grippers are positions).')
    if 'velocity_scale' in j and action_mode != ActionMode.VELOCITY:
        raise r.fail(f'{field}.velocity_scale', j['velocity_scale'],
                     "no velocity_scale unless action is 'velocity'",
                     'Remove velocity_scale or set action: velocity.')
    return JointSpec(
        name=name,
        slot=r.integer(j['slot'], f'{field}.slot', 0, UNIFIED_DIM - 1),
        lower=lower,
        upper=upper,
        max_velocity=r.number(j['max_velocity'], f'{field}.max_velocity', positive=True),
        action_mode=action_mode,
        gripper=gripper,
        velocity_scale=r.number(j.get('velocity_scale', 1.0), f'{field}.velocity_scale',
                                positive=True),
    )


def _parse_gripper(r: _Reader, value: Any, field: str, joint: str, lower: float,
                   upper: float) -> GripperSpec:
    g = r.mapping(value, field, _GRIPPER_KEYS)
    g_open = r.number(g['open_value'], f'{field}.open_value')
    g_closed = r.number(g['closed_value'], f'{field}.closed_value')
    if g_open == g_closed:
        raise r.fail(f'{field}.closed_value', g_closed,
                     f'a value different from open_value ({g_open})')
    for key, v in (('open_value', g_open), ('closed_value', g_closed)):
        if not lower <= v <= upper:
            raise r.fail(f'{field}.{key}', v,
                         f'a value within the joint limits [{lower}, {upper}]',
                         'Fix the gripper values or the joint limits.')
    state_keys = ('state_joint', 'state_open_value', 'state_closed_value')
    has_state = 'state_joint' in g
    if any((key in g) != has_state for key in state_keys):
        raise r.fail(field, g, f'{", ".join(state_keys)} together (or none of them)',
                     'Give all three when the state comes from another joint.')
    state_open, state_closed = g_open, g_closed
    if has_state:
        state_open = r.number(g['state_open_value'], f'{field}.state_open_value')
        state_closed = r.number(g['state_closed_value'], f'{field}.state_closed_value')
    if state_open == state_closed:
        raise r.fail(f'{field}.state_closed_value', state_closed,
                     f'a value different from state_open_value ({state_open})')
    return GripperSpec(
        state_joint=r.string(g['state_joint'], f'{field}.state_joint') if has_state else joint,
        state_open_value=state_open, state_closed_value=state_closed, open_value=g_open,
        closed_value=g_closed)


def _parse_base_dim(r: _Reader, value: Any, field: str) -> BaseDimSpec:
    d = r.mapping(value, field, _BASE_DIM_KEYS)
    slot = r.integer(d['slot'], f'{field}.slot', 0, UNIFIED_DIM - 1)
    if slot not in BASE_DIMS:
        raise r.fail(f'{field}.slot', slot, f'one of the base dims {list(BASE_DIMS)}')
    return BaseDimSpec(
        name=r.string(d['name'], f'{field}.name'),
        slot=slot,
        axis=r.choice(d['axis'], f'{field}.axis', BaseAxis),
        max_velocity=r.number(d['max_velocity'], f'{field}.max_velocity', positive=True),
        max_acceleration=r.number(d['max_acceleration'], f'{field}.max_acceleration',
                                  positive=True) if 'max_acceleration' in d else math.inf,
    )


def _parse_camera(r: _Reader, value: Any, field: str) -> CameraSpec:
    c = r.mapping(value, field, _CAMERA_KEYS)
    slot = c['model_slot']
    if slot is not None:
        slot = r.integer(slot, f'{field}.model_slot', 0, len(MODEL_IMAGE_KEYS) - 1)
    required = r.boolean(c.get('required', False), f'{field}.required')
    if required and slot is None:
        raise r.fail(f'{field}.required', True, 'false for a camera without a model_slot',
                     'Give the camera a model_slot or set required: false.')
    return CameraSpec(
        name=r.string(c['name'], f'{field}.name'),
        topic=r.string(c['topic'], f'{field}.topic'),
        compressed=r.boolean(c.get('compressed', False), f'{field}.compressed'),
        model_slot=slot,
        required=required,
        height=r.integer(c.get('height', DEFAULT_IMAGE_HEIGHT), f'{field}.height', 1, 1 << 16),
        width=r.integer(c.get('width', DEFAULT_IMAGE_WIDTH), f'{field}.width', 1, 1 << 16),
    )


def _parse_topic(r: _Reader, value: Any, field: str) -> JointStateTopic:
    t = r.mapping(value, field, _TOPIC_KEYS)
    prefix = t.get('prefix', '')
    if not isinstance(prefix, str):
        raise r.fail(f'{field}.prefix', prefix, "a string ('' for none)")
    return JointStateTopic(topic=r.string(t['topic'], f'{field}.topic'), prefix=prefix)


def _parse_command(r: _Reader, value: Any, field: str) -> CommandSpec:
    c = r.mapping(value, field, _COMMAND_KEYS)
    names = tuple(r.string(n, f'{field}.names[{i}]')
                  for i, n in enumerate(r.sequence(c['names'], f'{field}.names')))
    strip = c.get('strip_prefix', '')
    if not isinstance(strip, str):
        raise r.fail(f'{field}.strip_prefix', strip, "a string ('' for none)")
    for name in names:
        if not name.startswith(strip):
            raise r.fail(f'{field}.strip_prefix', strip,
                         f'a prefix of every name (not of {name!r})')
    return CommandSpec(
        type=r.choice(c['type'], f'{field}.type', CommandType),
        topic=r.string(c['topic'], f'{field}.topic'),
        names=names,
        joint_names=tuple(n[len(strip):] for n in names),
    )


def _duplicate_index(items: list) -> int | None:
    """Return the index of the first item equal to an earlier one, or None."""
    seen = set()
    for i, item in enumerate(items):
        if item in seen:
            return i
        seen.add(item)
    return None


def _check_unique(r: _Reader, items: list, fields: list[str], what: str, fix: str) -> None:
    """Fail on the first repeated value of ``items``; ``fields`` names each item's field."""
    i = _duplicate_index(items)
    if i is not None:
        first = fields[items.index(items[i])]
        raise r.fail(fields[i], items[i], f'{what} (already used by {first})', fix)


def _check_consistency(r: _Reader, c: RobotConfig) -> None:
    """Run the cross-field checks (duplicates, slots, command coverage)."""
    nj = len(c.joints)
    action_names = [j.name for j in c.joints] + [b.name for b in c.base]
    dim_fields = ([f'joints[{i}]' for i in range(nj)]
                  + [f'base.dims[{i}]' for i in range(len(c.base))])
    _check_unique(r, action_names, [f'{f}.name' for f in dim_fields], 'a unique name',
                  'Remove or rename the duplicate entry.')
    _check_unique(r, [j.state_name for j in c.joints],
                  [f'joints[{i}].gripper.state_joint' if j.gripper else f'joints[{i}].name'
                   for i, j in enumerate(c.joints)],
                  'a joint read by one dim only', 'Fix the gripper state_joint.')
    for i, j in enumerate(c.joints):
        if j.slot in BASE_DIMS:
            raise r.fail(f'joints[{i}].slot', j.slot,
                         f'a joint slot outside the base dims {list(BASE_DIMS)}',
                         'Declare base velocities under base.dims.')
    _check_unique(r, [j.slot for j in c.joints] + [b.slot for b in c.base],
                  [f'{f}.slot' for f in dim_fields], 'a unified slot used once',
                  'Give every joint its own slot.')
    _check_unique(r, [str(b.axis) for b in c.base],
                  [f'base.dims[{i}].axis' for i in range(len(c.base))],
                  'each base axis declared once', 'Remove or change the duplicate.')
    _check_unique(r, [cam.name for cam in c.cameras],
                  [f'cameras[{i}].name' for i in range(len(c.cameras))], 'a unique camera name',
                  'Rename the camera.')
    mapped = [(i, cam.model_slot) for i, cam in enumerate(c.cameras) if cam.model_slot is not None]
    if not mapped:
        raise r.fail('cameras', [cam.name for cam in c.cameras], 'at least one camera with a '
                     'model_slot', 'Map a camera to model_slot 0 (base_0_rgb).')
    _check_unique(r, [slot for _, slot in mapped], [f'cameras[{i}].model_slot' for i, _ in mapped],
                  'one camera per model slot', 'Set model_slot: null on the unused camera.')
    _check_unique(r, [t.topic for t in c.joint_state_topics],
                  [f'joint_state_topics[{i}].topic' for i in range(len(c.joint_state_topics))],
                  'a unique topic', 'Remove the duplicate topic.')
    base_names = {b.name for b in c.base}
    commanded: dict[str, int] = {}
    for i, cmd in enumerate(c.commands):
        for name in cmd.names:
            if name not in action_names:
                close = difflib.get_close_matches(name, action_names, n=1)
                hint = f"Did you mean '{close[0]}'? " if close else ''
                raise r.fail(f'commands[{i}].names', name,
                             f'a dim of this robot ({action_names})', f'{hint}Fix the name.')
            if (cmd.type in VELOCITY_COMMANDS) != (name in base_names):
                kind = 'a base dim' if cmd.type in VELOCITY_COMMANDS else 'a joint'
                raise r.fail(f'commands[{i}].names', name, f'{kind} for type {cmd.type.value!r}',
                             'Twist commands carry base dims; the others carry joints.')
            if name in commanded:
                raise r.fail(f'commands[{i}].names', name,
                             f'a dim not already sent by commands[{commanded[name]}]',
                             'Send each dim through one command.')
            commanded[name] = i
    missing = [n for n in action_names if n not in commanded]
    if missing:
        raise r.fail('commands', missing, 'every joint and base dim sent by some command',
                     'Add the dims to a command.')


def robot_config_dirs() -> list[pathlib.Path]:
    """
    Return the folders searched for ``<robot>.yaml``, in search order.

    Returns:
        Existing folders: $PI0_ROBOT_CONFIG_PATH entries, the source tree, the ament share folder,
        each AMENT_PREFIX_PATH share folder, the sys.prefix share folder (duplicates removed).

    """
    candidates = [pathlib.Path(p) for p in os.environ.get(CONFIG_PATH_ENV, '').split(os.pathsep)
                  if p]
    candidates.append(SOURCE_ROOT / ROBOTS_SUBDIR)
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(pathlib.Path(get_package_share_directory(SHARE_PACKAGE))
                          / ROBOTS_SUBDIR)
    except (ImportError, LookupError, OSError, ValueError):
        # ament_index_python missing, AMENT_PREFIX_PATH unset or the package not installed.
        pass
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(pathlib.Path(prefix) / 'share' / SHARE_PACKAGE / ROBOTS_SUBDIR)
    candidates.append(pathlib.Path(sys.prefix) / 'share' / SHARE_PACKAGE / ROBOTS_SUBDIR)
    dirs: list[pathlib.Path] = []
    for d in candidates:
        if d.is_dir() and d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    return dirs


def available_robots() -> list[str]:
    """Return the robot names found in `robot_config_dirs`, sorted."""
    names = {p.stem for d in robot_config_dirs() for p in d.iterdir()
             if p.suffix in CONFIG_SUFFIXES}
    return sorted(names)


def find_robot_config(name_or_path: str | os.PathLike) -> pathlib.Path:
    """
    Resolve a robot name or a file path to an existing YAML file.

    Args:
        name_or_path: a bare robot name ('aloha') or a path to a YAML file.

    Returns:
        The file path.

    Raises:
        ValueError: if no such file exists; the message lists the searched folders and the
            available robots, with the closest match.

    """
    text = os.fspath(name_or_path)
    looks_like_path = (os.sep in text or (os.altsep and os.altsep in text)
                       or text.endswith(CONFIG_SUFFIXES))
    if looks_like_path:
        path = pathlib.Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f'Robot config file {text!r} does not exist; pass an existing YAML '
                             'file or a robot name such as ' f'{available_robots()}.')
        return path
    dirs = robot_config_dirs()
    for d in dirs:
        for suffix in CONFIG_SUFFIXES:
            if (d / f'{text}{suffix}').is_file():
                return d / f'{text}{suffix}'
    robots = available_robots()
    close = difflib.get_close_matches(text, robots, n=1)
    hint = f"Did you mean '{close[0]}'? " if close else ''
    raise ValueError(
        f'Unknown robot {text!r}: no {text}.yaml in {[str(d) for d in dirs]}. {hint}'
        f'Available robots: {robots}. Pass one of them, a path to a YAML file, or add a folder '
        f'to ${CONFIG_PATH_ENV}.')


def load_robot_config(name_or_path: str | os.PathLike) -> RobotConfig:
    """
    Load and validate a robot config by name or path.

    Args:
        name_or_path: a bare robot name ('aloha', searched as documented in this module) or a
            path to a YAML file.

    Returns:
        The frozen, validated config.

    Raises:
        ValueError: if the file cannot be found, is not valid YAML or has a bad field.

    """
    path = find_robot_config(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as e:
        raise ValueError(f'Robot config {path} is not valid YAML: {e}. Fix the syntax.') from e
    return parse_robot_config(data, source=str(path), name=path.stem)
