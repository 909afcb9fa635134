"""
Launch substitution that turns launch arguments into a node parameter file that wins.

Used by the launch files as ``parameters=[overrides, params_file, overrides]``; see
:mod:`pi0_policy.ros.launch_overrides` for why the file goes first and last. Imports ``launch``,
which has no wheel in this toolchain: only launch files import this module.
"""

from collections.abc import Mapping

from launch.launch_context import LaunchContext
from launch.some_substitutions_type import SomeSubstitutionsType
from launch.substitution import Substitution
from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
from pi0_policy.ros.launch_overrides import overrides_document, write_params_file


class NodeOverrides(Substitution):
    """Substitute the path of a params file holding launch arguments under a node's name."""

    def __init__(self, node_name: str, *,
                 strings: Mapping[str, SomeSubstitutionsType] | None = None,
                 flags: Mapping[str, SomeSubstitutionsType] | None = None) -> None:
        """
        Remember the node name and the launch arguments of each parameter.

        Args:
            node_name: The name the node's parameter files key it by.
            strings: Parameter name -> substitution; written as a string, left out when empty.
            flags: Parameter name -> substitution; written as a bool.

        """
        super().__init__()
        self._node_name = node_name
        self._strings = {name: normalize_to_list_of_substitutions(value)
                         for name, value in (strings or {}).items()}
        self._flags = {name: normalize_to_list_of_substitutions(value)
                       for name, value in (flags or {}).items()}

    def describe(self) -> str:
        """Return the node name and the parameter names, for launch's --print output."""
        names = sorted([*self._strings, *self._flags])
        return f'NodeOverrides({self._node_name}: {", ".join(names)})'

    def perform(self, context: LaunchContext) -> str:
        """Evaluate the arguments, write the params file and return its path."""
        document = overrides_document(
            self._node_name,
            strings={k: perform_substitutions(context, v) for k, v in self._strings.items()},
            flags={k: perform_substitutions(context, v) for k, v in self._flags.items()})
        return write_params_file(document)
