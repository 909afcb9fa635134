"""
Map robots to and from pi0's unified 18-dim state/action layout (pure numpy, no rclpy).

Usage::

    adapter = load_adapter('aloha')            # config/robots/aloha.yaml -> BimanualAdapter
    state = adapter.state_from_joint_states(names, positions)
    unified = adapter.state_to_unified(state)  # (18,)
    actions = adapter.actions_from_unified(unified_actions)  # (H, 18) -> (H, dof)

Adapters register under an embodiment family name with `register_embodiment`; a robot config
names its family (``embodiment: bimanual``). The built-in families (single_arm, bimanual,
mobile_manipulator, mock) are imported on first lookup.
"""

import difflib
import importlib
import os
from typing import Callable, TypeVar

from embodiment_adapters.common import EmbodimentAdapter
from embodiment_adapters.config import (
    ActionMode, available_robots, BaseAxis, BaseDimSpec, CameraSpec, CommandSpec, CommandType,
    config_error, GripperSpec, JointSpec, JointStateTopic, load_robot_config, parse_robot_config,
    robot_config_dirs, RobotConfig)
from embodiment_adapters.unified import (
    BASE_0, BASE_1, BASE_2, BASE_DIMS, GRIPPER_DIMS, LEFT_ARM, LEFT_GRIPPER, MODEL_IMAGE_KEYS,
    OPENPI_MODEL_WIDTH, pad, PAPER_MODEL_WIDTH, RIGHT_ARM, RIGHT_GRIPPER, TORSO, trim,
    UNIFIED_DIM, UNIFIED_NAMES)

__all__ = [
    'ActionMode', 'available_embodiments', 'available_robots', 'BASE_0', 'BASE_1', 'BASE_2',
    'BASE_DIMS', 'BaseAxis', 'BaseDimSpec', 'CameraSpec', 'CommandSpec', 'CommandType',
    'config_error', 'EmbodimentAdapter', 'get_embodiment', 'GRIPPER_DIMS', 'GripperSpec',
    'JointSpec', 'JointStateTopic', 'LEFT_ARM', 'LEFT_GRIPPER', 'load_adapter',
    'load_robot_config', 'make_adapter', 'MODEL_IMAGE_KEYS', 'OPENPI_MODEL_WIDTH', 'pad',
    'PAPER_MODEL_WIDTH', 'parse_robot_config', 'register_embodiment', 'RIGHT_ARM',
    'RIGHT_GRIPPER', 'robot_config_dirs', 'RobotConfig', 'TORSO', 'trim', 'UNIFIED_DIM',
    'UNIFIED_NAMES',
]

# Modules of this package that define the built-in embodiment families.
BUILTIN_MODULES = ('single_arm', 'bimanual', 'mobile_manipulator', 'mock')

_REGISTRY: dict[str, type[EmbodimentAdapter]] = {}
AdapterType = TypeVar('AdapterType', bound=type[EmbodimentAdapter])


def register_embodiment(name: str) -> Callable[[AdapterType], AdapterType]:
    """
    Register an adapter class under an embodiment family name (class decorator).

    Args:
        name: family name used by robot configs (``embodiment: <name>``).

    Returns:
        A decorator that records the class, sets its ``family`` and returns it unchanged.

    Raises:
        ValueError: if another class already uses the name.

    """
    def decorator(cls: AdapterType) -> AdapterType:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"Embodiment '{name}' is already registered by {_REGISTRY[name].__qualname__}; "
                f'choose another name for {cls.__qualname__}.')
        cls.family = name
        _REGISTRY[name] = cls
        return cls
    return decorator


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f'{__name__}.{module}')


def available_embodiments() -> list[str]:
    """Return the registered embodiment family names, sorted."""
    _import_builtins()
    return sorted(_REGISTRY)


def get_embodiment(name: str) -> type[EmbodimentAdapter]:
    """
    Return the adapter class registered under ``name``.

    Args:
        name: embodiment family name, e.g. 'bimanual'.

    Returns:
        The adapter class.

    Raises:
        ValueError: for an unknown name; the message lists the available names and suggests the
            closest one.

    """
    available = available_embodiments()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), available, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f'Unknown embodiment {name!r}.{hint} Available embodiments: '
                         f'{available}.')
    return _REGISTRY[name]


def make_adapter(robot_config: RobotConfig) -> EmbodimentAdapter:
    """
    Build the adapter for a robot config, chosen by its ``embodiment`` field.

    Args:
        robot_config: a config from `load_robot_config`.

    Returns:
        The adapter.

    Raises:
        ValueError: if the embodiment is unknown (naming the config file) or the config does not
            fit the family.

    """
    try:
        cls = get_embodiment(robot_config.embodiment)
    except ValueError as e:
        raise ValueError(f'Robot config {robot_config.source}: {e} Fix the embodiment '
                         'field.') from e
    return cls(robot_config)


def load_adapter(name_or_path: str | os.PathLike) -> EmbodimentAdapter:
    """
    Load a robot config by name or path and build its adapter.

    Args:
        name_or_path: robot name ('aloha') or YAML path (see `load_robot_config`).

    Returns:
        The adapter.

    """
    return make_adapter(load_robot_config(name_or_path))
