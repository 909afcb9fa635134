"""
Static checks of the launch files (launch_ros has no wheel here), and a build where it exists.

Each launch file is parsed with ``ast``: every executable it names must be a console script of
setup.py, every config file it names must exist and parse as a ROS params YAML for the node,
every DeclareLaunchArgument must have a description, and the required arguments must exist.
"""

import ast
import importlib.util
import pathlib

from pi0_policy.ros import params
from pi0_policy.ros.sim import sim_node
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
# The per-setup launch files; each includes the base launch file pi0_policy.launch.py.
OWN_LAUNCH_FILES = ('bimanual', 'single_arm', 'mobile_manipulator', 'sim_bimanual')
BASE_LAUNCH_FILE = 'pi0_policy'
REQUIRED_ARGUMENTS = {'checkpoint', 'robot', 'prompt', 'device', 'rviz', 'use_sim_time'}
NODE_NAME = 'pi0_policy_node'
SIM_NODE_NAME = 'aloha_sim'
# Executables of other packages that a launch file may start.
EXTERNAL_EXECUTABLES = {'rviz2', 'robot_state_publisher'}
MAX_LINES = 80


def console_scripts() -> set[str]:
    """Return the console-script names declared in setup.py (parsed, not executed)."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    scripts |= {elt.value.split('=')[0].strip() for elt in value.elts}
    return scripts


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Return the calls of a function or class called ``name``."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def module_strings(tree: ast.Module) -> dict[str, str]:
    """Return module-level NAME = 'string' assignments (used in f-strings of the file)."""
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def literal(node: ast.AST, names: dict[str, str]) -> str:
    """Evaluate a string constant or an f-string over module-level string constants."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return ''.join(literal(v.value if isinstance(v, ast.FormattedValue) else v, names)
                       for v in node.values)
    if isinstance(node, ast.Name):
        return names[node.id]
    raise AssertionError(f'not a literal: {ast.dump(node)}')


def test_the_three_setups_have_launch_files():
    names = {path.name.removesuffix('.launch.py') for path in LAUNCH_FILES}
    assert set(OWN_LAUNCH_FILES) <= names


def referenced_files(tree: ast.Module) -> list[pathlib.Path]:
    """Return the package files a launch file names through PathJoinSubstitution."""
    names = module_strings(tree)
    return [ROOT.joinpath(*[literal(e, names) for e in call.args[0].elts[1:]])
            for call in calls(tree, 'PathJoinSubstitution')]


def declared_arguments(path: pathlib.Path) -> set[str]:
    """Return the arguments a launch file declares itself or through the files it includes."""
    tree = ast.parse(path.read_text())
    declared = set()
    for call in calls(tree, 'DeclareLaunchArgument'):
        name = literal(call.args[0], {})
        description = keyword(call, 'description')
        assert description is not None and literal(description, {}).strip(), name
        assert keyword(call, 'default_value') is not None, name
        declared.add(name)
    for included in referenced_files(tree):
        if included.name.endswith('.launch.py') and included != path:
            declared |= declared_arguments(included)
    return declared


@pytest.mark.parametrize('setup', (BASE_LAUNCH_FILE, *OWN_LAUNCH_FILES))
def test_launch_file_is_thin_and_declares_described_arguments(setup):
    path = ROOT / 'launch' / f'{setup}.launch.py'
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    tree = ast.parse(text)
    assert ast.get_docstring(tree)
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    declared = declared_arguments(path)
    assert REQUIRED_ARGUMENTS <= declared, f'missing: {REQUIRED_ARGUMENTS - declared}'
    used = {literal(call.args[0], {}) for call in calls(tree, 'LaunchConfiguration')}
    assert used <= declared, f'undeclared: {used - declared}'


@pytest.mark.parametrize('setup', (BASE_LAUNCH_FILE, *OWN_LAUNCH_FILES))
def test_executables_are_console_scripts_and_configs_are_params_files(setup):
    tree = ast.parse((ROOT / 'launch' / f'{setup}.launch.py').read_text())
    names = module_strings(tree)
    scripts = console_scripts()
    for call in calls(tree, 'Node'):
        executable = literal(keyword(call, 'executable'), names)
        package = literal(keyword(call, 'package'), names)
        if package == 'pi0_policy':
            assert executable in scripts
        else:
            assert executable in EXTERNAL_EXECUTABLES
    configs = referenced_files(tree)
    assert configs
    declared_by_node = {NODE_NAME: set(params.PARAMETER_NAMES),
                        SIM_NODE_NAME: {spec.name for spec in sim_node.SIM_PARAMETERS}}
    for config in configs:
        assert config.is_file(), config
        if config.suffix == '.yaml':
            data = yaml.safe_load(config.read_text())
            assert NODE_NAME in data and set(data) <= set(declared_by_node), list(data)
            for node, section in data.items():
                overrides = section['ros__parameters']
                unknown = set(overrides) - declared_by_node[node]
                assert not unknown, f'{config.name} sets undeclared {node} parameters {unknown}'
            # The policy node's values pass the parameter checks.
            params.node_config_from_values(data[NODE_NAME]['ros__parameters'])


def test_rviz_config_shows_the_previews():
    data = yaml.safe_load((ROOT / 'config' / 'pi0.rviz').read_text())
    topics = [d.get('Topic', {}).get('Value') for d in data['Visualization Manager']['Displays']]
    assert f'/{NODE_NAME}/preview/markers' in topics


@pytest.mark.parametrize('setup', (BASE_LAUNCH_FILE, *OWN_LAUNCH_FILES))
def test_launch_description_builds_where_launch_ros_exists(setup):
    pytest.importorskip('launch_ros', reason='launch_ros has no wheel in this toolchain')
    spec = importlib.util.spec_from_file_location(setup, ROOT / 'launch' / f'{setup}.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name for a in description.get_launch_arguments()}
    assert REQUIRED_ARGUMENTS <= arguments
