"""
Build the parameter file that makes launch arguments win over a node's parameter files.

rclpy (Jazzy, 7.1.x) merges every ``--params-file`` and ``-p`` rule of a node into one list of
entries, one entry per node-name key (``/**``, ``pi0_policy_node``, ...) in the order the keys
first appear, and applies the entries in that order: a key seen first loses to a key seen later,
whatever the order of the files. A launch file that passes ``{'robot': ...}`` (launch_ros writes
it under ``/**``) before or after a YAML keyed by the node's name therefore always loses to the
YAML. The file built here is passed first AND last (``parameters=[overrides, params_file,
overrides]``):

* first, its empty ``/**`` entry and its node entry fix the order: wildcard entries (of any later
  file) rank below node entries, as in rclcpp;
* last, its node entry is the last word on every launch argument it carries.

rcl keeps ``pi0_policy_node`` and ``/pi0_policy_node`` as two entries, so the node entry is
written under both spellings (a user file may use either).

String arguments are written as YAML strings (``prompt:=yes`` stays ``'yes'``, ``prompt:='Task:
fold the towel'`` stays one string); an empty string means "not given" and is left out, so the
parameter file's value (or the node's default) applies. Flags accept what launch's
``IfCondition`` accepts (``true``/``false``/``1``/``0``, any case).

Pure Python (no launch import): :mod:`pi0_policy.ros.launch_substitutions` wraps it as a launch
substitution.
"""

from collections.abc import Mapping
import os
import tempfile
from typing import Any

import yaml

# Key of the parameters that apply to every node.
WILDCARD = '/**'
PARAMETERS_KEY = 'ros__parameters'
# Flag spellings, as launch.conditions.IfCondition accepts them (compared lower-case).
_TRUE = ('true', '1')
_FALSE = ('false', '0')
FILE_PREFIX = 'pi0_launch_arguments_'


def parse_flag(name: str, text: str) -> bool:
    """
    Return the boolean of a launch argument spelled as ``IfCondition`` accepts it.

    Raises:
        ValueError: ``text`` is none of true/false/1/0 (any case).

    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f'Launch argument {name}:={text!r} is not a flag; expected true or false '
                     f"(or 1/0), e.g. '{name}:=true'.")


def overrides_document(node_name: str, *, strings: Mapping[str, str] | None = None,
                       flags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """
    Return the params-file document that carries launch arguments for one node.

    Args:
        node_name: The node's name as its parameter files key it (e.g. ``pi0_policy_node``).
        strings: Parameter name -> launch argument text, written as a string; empty ones are
            left out (not given).
        flags: Parameter name -> launch argument text, written as a bool (see ``parse_flag``).

    Returns:
        ``{'/**': {'ros__parameters': {}}, node_name: {'ros__parameters': {...}},
        '/' + node_name: {...}}``, wildcard first (the order is what ranks node entries above
        wildcard ones).

    Raises:
        ValueError: An empty node name, a non-string value or a flag that is not a flag.

    """
    node_name = node_name.lstrip('/')
    if not node_name or node_name.startswith('*'):
        raise ValueError(f'overrides_document needs the node name its parameter files use '
                         f"(e.g. 'pi0_policy_node'); got {node_name!r}.")
    values: dict[str, str | bool] = {}
    for name, text in (strings or {}).items():
        if not isinstance(text, str):
            raise ValueError(f'Launch argument {name} must be text; got {text!r} '
                             f'({type(text).__name__}).')
        if text:
            values[name] = text
    for name, text in (flags or {}).items():
        values[name] = parse_flag(name, text)
    return {WILDCARD: {PARAMETERS_KEY: {}}, node_name: {PARAMETERS_KEY: values},
            f'/{node_name}': {PARAMETERS_KEY: dict(values)}}


def write_params_file(document: Mapping[str, Any], directory: str | None = None) -> str:
    """
    Write a params-file document to a new file (kept after the launch, as launch_ros does).

    Returns:
        The file's path.

    """
    handle, path = tempfile.mkstemp(prefix=FILE_PREFIX, suffix='.yaml', dir=directory)
    with os.fdopen(handle, 'w', encoding='utf-8') as stream:
        # sort_keys=False keeps the wildcard entry first.
        yaml.safe_dump(dict(document), stream, sort_keys=False, allow_unicode=True)
    return path
