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
from pi0_policy.ros.process import EXIT_WITH_PARENT_FLAG
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
DEFAULTS = {spec.name: spec.default for spec in params.PARAMETERS}
SIM_DEFAULTS = {spec.name: spec.default for spec in sim_node.SIM_PARAMETERS}


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


def configurations(tree: ast.Module) -> set[str]:
    """Return the launch configurations a file reads, also those read in a comprehension."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.DictComp, ast.ListComp, ast.SetComp)) and calls(
                node, 'LaunchConfiguration'):
            used |= {literal(e, {}) for e in node.generators[0].iter.elts}
    for call in calls(tree, 'LaunchConfiguration'):
        if not isinstance(call.args[0], ast.Name):
            used.add(literal(call.args[0], {}))
    return used


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
    used = configurations(tree)
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


def node_overrides(tree: ast.Module) -> dict[str, tuple[str, set[str]]]:
    """Return variable -> (node name, parameter names) of the NodeOverrides calls of a file."""
    names = module_strings(tree)
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, 'id', None) == 'NodeOverrides'):
            call = node.value
            carried = set()
            for kind in ('strings', 'flags'):
                value = keyword(call, kind)
                if isinstance(value, ast.Dict):
                    carried |= {literal(k, names) for k in value.keys}
                elif isinstance(value, ast.DictComp):
                    carried |= {literal(e, names) for e in value.generators[0].iter.elts}
            found[node.targets[0].id] = (literal(call.args[0], names), carried)
    return found


def own_nodes(tree: ast.Module) -> dict[str, ast.Call]:
    """Return node name -> Node call of the pi0_policy nodes a launch file starts."""
    names = module_strings(tree)
    return {literal(keyword(call, 'name'), names): call for call in calls(tree, 'Node')
            if literal(keyword(call, 'package'), names) == 'pi0_policy'}


# The parameters each node gets from launch arguments; no setup YAML may set them (they would be
# dead values: the launch argument always wins).
LAUNCH_PARAMETERS = {NODE_NAME: {'robot', 'checkpoint', 'prompt', 'device', 'use_sim_time',
                                 'policy_backend', 'policy_url', 'policy_api_key'},
                     SIM_NODE_NAME: {'robot', 'sim_time'}}


@pytest.mark.parametrize('setup', (BASE_LAUNCH_FILE, *OWN_LAUNCH_FILES))
def test_every_node_gets_the_launch_arguments_first_and_last(setup):
    # rclpy ranks parameter entries by the first appearance of their node key, not by file
    # order (test_launch_overrides proves it with real rclpy); the overrides file first and last
    # is what makes the launch arguments win over any params file (see launch_overrides).
    tree = ast.parse((ROOT / 'launch' / f'{setup}.launch.py').read_text())
    overrides = node_overrides(tree)
    for name, call in own_nodes(tree).items():
        parameters = keyword(call, 'parameters')
        assert isinstance(parameters, ast.List) and len(parameters.elts) >= 3, name
        first, *files, last = parameters.elts
        assert isinstance(first, ast.Name) and isinstance(last, ast.Name), name
        assert first.id == last.id and first.id in overrides, (
            f'{setup}: {name} must get its NodeOverrides first and last')
        node, carried = overrides[first.id]
        assert node == name
        assert carried == LAUNCH_PARAMETERS[name], f'{setup}: {name} carries {carried}'
        assert files, f'{setup}: {name} gets no params file'
        # If launch dies (SIGTERM/SIGKILL leave its children running), the node stops too.
        arguments = keyword(call, 'arguments')
        assert arguments is not None and EXIT_WITH_PARENT_FLAG in {
            literal(e, {}) for e in arguments.elts}, f'{setup}: {name} could be orphaned'


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_node_parameters_from_launch_arguments_are_typed(path):
    # launch_ros YAML-parses an untyped substitution: prompt:=yes became the bool True and
    # prompt:='Task: fold the towel' a dict. Values in a parameters dict must be typed.
    tree = ast.parse(path.read_text())
    for call in calls(tree, 'Node'):
        for entry in getattr(keyword(call, 'parameters'), 'elts', []):
            if isinstance(entry, ast.Dict):
                for key, value in zip(entry.keys, entry.values):
                    untyped = (isinstance(value, ast.Name) or calls(value, 'LaunchConfiguration')
                               and not calls(value, 'ParameterValue'))
                    assert not untyped, f'{path.name}: {literal(key, {})} needs ParameterValue'


@pytest.mark.parametrize('setup', OWN_LAUNCH_FILES)
def test_setup_launch_files_forward_params_file_and_their_own_arguments(setup):
    # A per-setup file that fixes params_file in its include would silently ignore
    # params_file:= (the include's value wins): it must declare and forward it.
    tree = ast.parse((ROOT / 'launch' / f'{setup}.launch.py').read_text())
    own = {literal(call.args[0], {}) for call in calls(tree, 'DeclareLaunchArgument')}
    assert {'params_file', 'rviz_config', 'robot'} <= own
    (include,) = calls(tree, 'IncludeLaunchDescription')
    forwarded = {n.value for n in ast.walk(keyword(include, 'launch_arguments'))
                 if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert own <= forwarded, f'{setup} declares but does not forward {own - forwarded}'
    arguments = keyword(include, 'launch_arguments')
    assert not calls(arguments, 'PathJoinSubstitution'), 'the include must not fix a file'


@pytest.mark.parametrize('config', sorted(p.name for p in (ROOT / 'config').glob('*.yaml')))
def test_setup_yamls_do_not_set_launch_arguments(config):
    data = yaml.safe_load((ROOT / 'config' / config).read_text())
    for key, section in data.items():
        node = key.lstrip('/')
        carried = (set().union(*LAUNCH_PARAMETERS.values()) if node == '**'
                   else LAUNCH_PARAMETERS.get(node, set()))
        shadowed = carried & set(section['ros__parameters'])
        assert not shadowed, (f'config/{config} sets {sorted(shadowed)} for {key}: launch '
                              'arguments set them; remove them from the YAML')


def setup_defaults(setup: str) -> dict[str, str]:
    """Return the literal default values of a per-setup launch file's own arguments."""
    tree = ast.parse((ROOT / 'launch' / f'{setup}.launch.py').read_text())
    return {literal(call.args[0], {}): keyword(call, 'default_value')
            for call in calls(tree, 'DeclareLaunchArgument')}


@pytest.mark.parametrize('setup', OWN_LAUNCH_FILES)
def test_rviz_config_of_each_setup_shows_what_its_nodes_publish(setup):
    defaults = setup_defaults(setup)
    tree = ast.parse((ROOT / 'launch' / f'{setup}.launch.py').read_text())
    rviz_file = [path for path in referenced_files(tree) if path.suffix == '.rviz']
    assert rviz_file == [ROOT / 'config' / f'{setup}.rviz']
    rviz = yaml.safe_load((ROOT / 'config' / f'{setup}.rviz').read_text())
    manager = rviz['Visualization Manager']
    node_params = yaml.safe_load((ROOT / 'config' / f'{setup}.yaml').read_text())
    policy_params = node_params[NODE_NAME]['ros__parameters']
    frame = policy_params.get('preview_frame', DEFAULTS['preview_frame'])
    assert manager['Global Options']['Fixed Frame'] == frame
    robot = yaml.safe_load((ROOT / 'config' / 'robots' /
                            f'{literal(defaults["robot"], {})}.yaml').read_text())
    cameras = {cam['name']: cam['topic'] for cam in robot['cameras']}
    if setup.startswith('sim_'):
        sim_values = node_params[SIM_NODE_NAME]['ros__parameters']
        camera_map = sim_values.get('camera_map', SIM_DEFAULTS['camera_map'])
        cameras = {n: t for n, t in cameras.items()
                   if n in sim_node.parse_mapping(camera_map, 'camera_map')}
    displays = manager['Displays']
    topics = {d['Topic']['Value'] for d in displays if 'Topic' in d}
    images = {d['Topic']['Value'] for d in displays if d['Class'].endswith('/Image')}
    assert f'/{NODE_NAME}/preview/markers' in topics
    assert images == set(cameras.values()), 'one Image display per camera of the robot'
    assert topics == images | {f'/{NODE_NAME}/preview/markers'}, 'no topic nobody publishes'
    # Nothing in this package publishes a robot_description: no RobotModel display.
    assert not [d for d in displays if d['Class'].endswith('/RobotModel')]
    assert 'robot_description' not in (ROOT / 'config' / f'{setup}.rviz').read_text()


@pytest.mark.parametrize('setup', (BASE_LAUNCH_FILE, *OWN_LAUNCH_FILES))
def test_launch_description_builds_where_launch_ros_exists(setup):
    pytest.importorskip('launch_ros', reason='launch_ros has no wheel in this toolchain')
    spec = importlib.util.spec_from_file_location(setup, ROOT / 'launch' / f'{setup}.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name for a in description.get_launch_arguments()}
    assert REQUIRED_ARGUMENTS <= arguments
