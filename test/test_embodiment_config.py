"""Tests of robot-config loading: search order and every validation error."""

import copy
import pathlib
import re

import embodiment_adapters as ea
from embodiment_adapters import config as config_module
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROBOTS = ROOT / 'config' / 'robots'


def _doc(robot: str) -> dict:
    return yaml.safe_load((ROBOTS / f'{robot}.yaml').read_text())


def _write(tmp_path: pathlib.Path, doc: dict, name: str = 'bad.yaml') -> pathlib.Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _set(path: str, value):
    """Return an edit that sets a dotted path (list indices as integers) in a document."""
    def edit(doc):
        keys = [int(k) if k.isdigit() else k for k in path.split('.')]
        target = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return edit


def _delete(path: str):
    def edit(doc):
        keys = [int(k) if k.isdigit() else k for k in path.split('.')]
        target = doc
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return edit


def _add_mock_base(doc):
    doc['base'] = {'dims': [{'name': 'base_vx', 'slot': 14, 'axis': 'linear_x',
                             'max_velocity': 0.5}]}
    doc['commands'].append({'type': 'twist', 'topic': '/cmd_vel', 'names': ['base_vx']})


# (robot, edit, field named in the message, further regex the message must match)
BAD_FIELDS = [
    ('mock', _set('joints.0.sloot', 1), 'joints[0].sloot', r"Did you mean 'slot'\?"),
    ('mock', _set('colour', 'red'), 'colour', r'one of the known keys'),
    ('mock', _delete('control_rate_hz'), 'control_rate_hz', r'the field is required'),
    ('mock', _delete('joints.1.lower'), 'joints[1].lower', r'the field is required'),
    ('mock', _set('joints.1.slot', 0), 'joints[1].slot', r'already used by joints\[0\].slot'),
    ('mock', _set('joints.2.slot', 18), 'joints[2].slot', r'an integer in \[0, 17\]'),
    ('mock', _set('joints.2.slot', -1), 'joints[2].slot', r'an integer in \[0, 17\]'),
    ('mock', _set('joints.2.slot', 15), 'joints[2].slot', r'outside the base dims'),
    ('mock', _set('joints.0.lower', 4.0), 'joints[0].lower', r'<= upper \(3.14159\) for joint '
                                                             r"'mock_joint1'"),
    ('mock', _set('joints.0.upper', 'high'), 'joints[0].upper', r'a finite number'),
    ('mock', _set('joints.0.max_velocity', 0), 'joints[0].max_velocity', r'> 0'),
    ('mock', _set('joints.0.max_velocity', float('nan')), 'joints[0].max_velocity', 'finite'),
    ('mock', _set('joints.0.action', 'relative'), 'joints[0].action',
     r"one of \['absolute', 'delta', 'velocity'\]"),
    ('mock', _set('joints.3.action', 'velocity'), 'joints[3].action',
     r"'absolute' or 'delta' for a gripper"),
    ('mock', _set('joints.0.velocity_scale', 3.0), 'joints[0].velocity_scale',
     r"no velocity_scale unless action is 'velocity'"),
    ('franka_droid', _set('joints.0.velocity_scale', 0), 'joints[0].velocity_scale', r'> 0'),
    ('mock', _set('joints.1.name', 'mock_joint1'), 'joints[1].name',
     r"'mock_joint1'; expected a unique name \(already used by joints\[0\].name\)"),
    ('aloha', _set('joints.13.gripper.state_joint', 'left_left_finger'),
     'joints[13].gripper.state_joint', r'read by one dim only.*joints\[6\].gripper.state_joint'),
    ('aloha', _set('joints.6.gripper.state_joint', 'left_waist'), 'joints[6].gripper.state_joint',
     r"'left_waist'; expected a joint read by one dim only \(already used by joints\[0\].name"),
    ('mobile_manipulator', _set('base.dims.2.name', 'base_vx'), 'base.dims[2].name',
     r'already used by base.dims\[0\].name'),
    ('mock', _set('joint_state_topics', [{'topic': '/a'}, {'topic': '/a', 'prefix': 'x_'}]),
     'joint_state_topics[1].topic', r"'/a'; expected a unique topic"),
    ('mock', _set('cameras.0', {'name': 'c', 'topic': '/c', 'model_slot': None}), 'cameras',
     r"\['c'\]; expected at least one camera with a model_slot"),
    ('mock', _set('joints.3.gripper.closed_value', 0.04), 'joints[3].gripper.closed_value',
     r'different from open_value \(0.04\)'),
    ('mock', _set('joints.3.gripper.open_value', 0.5), 'joints[3].gripper.open_value',
     r'within the joint limits \[0.0, 0.04\]'),
    ('mock', _set('joints.3.gripper.state_joint', 'finger'), 'joints[3].gripper',
     r'state_joint, state_open_value, state_closed_value together'),
    ('mock', _set('cameras.0.model_slot', 3), 'cameras[0].model_slot', r'\[0, 2\]'),
    ('mock', _set('cameras.0.model_slot', None), 'cameras[0].required',
     r'Give the camera a model_slot or set required: false'),
    ('mock', _set('cameras.0.compressed', 'yes'), 'cameras[0].compressed', r'true or false'),
    ('aloha', _set('cameras.1.model_slot', 0), 'cameras[1].model_slot',
     r'one camera per model slot \(already used by cameras\[0\].model_slot\)'),
    ('aloha', _set('cameras.1.name', 'cam_high'), 'cameras[1].name', r'a unique camera name'),
    ('mock', _set('commands.0.names', ['mock_joint1', 'mock_joint9']), 'commands[0].names',
     r"'mock_joint9'; expected a dim of this robot .*Did you mean 'mock_joint3'"),
    ('mock', _set('commands.1.names', ['mock_joint3', 'mock_gripper']), 'commands[1].names',
     r"'mock_joint3'; expected a dim not already sent by commands\[0\]"),
    ('mock', _set('commands.1.type', 'forward_velocity'), 'commands[1].type',
     r"Did you mean 'forward_position'"),
    ('mock', _set('commands.1.type', 'twist'), 'commands[1].names',
     r"'mock_gripper'; expected a base dim for type 'twist'"),
    ('mock', _set('commands.1.names', []), 'commands[1].names', r'a non-empty list'),
    ('mock', _set('commands.1.strip_prefix', 'left_'), 'commands[1].strip_prefix',
     r"a prefix of every name \(not of 'mock_gripper'\)"),
    ('mock', _delete('commands.1'), 'commands', r"\['mock_gripper'\]; expected every joint"),
    ('mock', _set('joint_state_topics', []), 'joint_state_topics', r'a non-empty list'),
    ('mock', _set('joint_state_topics.0.prefix', 3), 'joint_state_topics[0].prefix',
     r'a string'),
    ('mock', _set('control_rate_hz', -50), 'control_rate_hz', r'> 0'),
    ('mock', _set('unified_gripper', {'open_value': 1.0, 'closed_value': 1.0}),
     'unified_gripper.closed_value', r'different from open_value \(1.0\)'),
    ('aloha', _set('unified_gripper', {'open_value': 1.0, 'closed_value': 0.0}), 'unified_gripper',
     r'no value with adapt_to_pi'),
    ('mobile_manipulator', _set('base.dims.0.slot', 13), 'base.dims[0].slot',
     r'one of the base dims \[14, 15, 16\]'),
    ('mobile_manipulator', _set('base.dims.1.axis', 'linear_x'), 'base.dims[1].axis',
     r"'linear_x'; expected each base axis declared once"),
    ('mobile_manipulator', _set('base.dims.1.axis', 'lateral'), 'base.dims[1].axis',
     r"one of \['linear_x', 'linear_y', 'angular_z'\]"),
    ('mobile_manipulator', _set('commands.5.type', 'joint_trajectory'), 'commands[5].names',
     r"'base_vx'; expected a joint for type 'joint_trajectory'"),
    # Family rules (checked when the adapter is built).
    ('mock', _add_mock_base, 'base', r'no base dims for a single arm'),
    ('mock', _set('adapt_to_pi', True), 'adapt_to_pi', r'use embodiment: bimanual'),
    ('aloha', _set('joints.6.action', 'delta'), 'joints[6].action',
     r"'absolute' for ALOHA grippers"),
    ('aloha', _set('joints.13.slot', 17), 'joints', r'the ALOHA slots'),
    ('franka', _set('embodiment', 'bimanual'), 'joints',
     r'joints in the right arm slots 7-12.*Use embodiment: single_arm'),
    ('mobile_manipulator', _delete('base'), 'commands[5].names',
     r"'base_vx'; expected a dim of this robot"),
]


@pytest.mark.parametrize('robot,edit,field,pattern', BAD_FIELDS,
                         ids=[f'{r}-{f}-{i}' for i, (r, _, f, _) in enumerate(BAD_FIELDS)])
def test_bad_field_errors_name_file_field_and_value(tmp_path, robot, edit, field, pattern):
    """Each bad field fails on load, naming the file, the field and what was expected."""
    doc = copy.deepcopy(_doc(robot))
    edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError) as err:
        ea.load_adapter(path)
    message = str(err.value)
    assert message.startswith(f'Robot config {path}: field ')
    assert f"'{field}'" in message
    assert 'expected' in message
    assert re.search(pattern, message), message


def test_mobile_without_base_is_rejected_by_family(tmp_path):
    """A mobile_manipulator config without base dims fails the family check."""
    doc = _doc('mobile_manipulator')
    del doc['base']
    doc['commands'] = doc['commands'][:-1]
    with pytest.raises(ValueError, match=r"field 'base' has the value None; expected base.dims"):
        ea.load_adapter(_write(tmp_path, doc))


def test_invalid_yaml_syntax(tmp_path):
    """Broken YAML names the file."""
    path = tmp_path / 'broken.yaml'
    path.write_text('embodiment: [mock\n')
    with pytest.raises(ValueError, match=rf'Robot config {path} is not valid YAML'):
        ea.load_robot_config(path)


def test_top_level_not_a_mapping(tmp_path):
    """A YAML list at the top level is rejected."""
    path = tmp_path / 'list.yaml'
    path.write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match=r"field '<top level>' has the value \[1, 2\]; expected "
                                         'a mapping'):
        ea.load_robot_config(path)


def test_unknown_robot_suggests_closest():
    """An unknown robot name lists the searched folders and the available robots."""
    with pytest.raises(ValueError, match=r"Unknown robot 'alohaa'.*Did you mean 'aloha'\? "
                                         r"Available robots: \[.*'franka'.*\]"):
        ea.load_robot_config('alohaa')


def test_missing_file_path():
    """A path that does not exist is reported as such."""
    with pytest.raises(ValueError, match=r"Robot config file '/nonexistent/x.yaml' does not "
                                         'exist'):
        ea.load_robot_config('/nonexistent/x.yaml')


def test_name_defaults_to_file_stem_and_can_be_set(tmp_path):
    """The robot name is the file stem unless the YAML sets `name`."""
    doc = _doc('mock')
    assert ea.load_robot_config(_write(tmp_path, doc, 'my_arm.yaml')).name == 'my_arm'
    doc['name'] = 'renamed'
    assert ea.load_robot_config(_write(tmp_path, doc, 'other.yaml')).name == 'renamed'


def test_config_is_frozen():
    """Configs are immutable."""
    config = ea.load_robot_config('mock')
    with pytest.raises(AttributeError):
        config.control_rate_hz = 1.0


# ----- search order ----------------------------------------------------------------------------

def _install_share(prefix: pathlib.Path, robot_text: str, name: str = 'aloha') -> pathlib.Path:
    share = prefix / 'share' / 'pi0_policy'
    (share / 'config' / 'robots').mkdir(parents=True)
    (share / 'config' / 'robots' / f'{name}.yaml').write_text(robot_text)
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    (index / 'pi0_policy').write_text('')
    return share / 'config' / 'robots' / f'{name}.yaml'


def test_source_tree_is_found():
    """From a checkout, 'aloha' resolves to <repo>/config/robots/aloha.yaml."""
    assert ea.load_robot_config('aloha').source == str(ROBOTS / 'aloha.yaml')


@pytest.mark.parametrize('with_ament_index', [True, False])
def test_installed_share_dir_is_found(tmp_path, monkeypatch, with_ament_index):
    """Without a source tree, the config comes from <prefix>/share/pi0_policy/config/robots."""
    expected = _install_share(tmp_path / 'install', (ROBOTS / 'aloha.yaml').read_text())
    monkeypatch.setattr(config_module, 'SOURCE_ROOT', tmp_path / 'no_checkout')
    monkeypatch.setattr(config_module.sys, 'prefix', str(tmp_path / 'no_prefix'))
    monkeypatch.delenv(config_module.CONFIG_PATH_ENV, raising=False)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path / 'install'))
    if not with_ament_index:
        # Hide ament_index_python: only the AMENT_PREFIX_PATH scan can find it.
        monkeypatch.setitem(__import__('sys').modules, 'ament_index_python.packages', None)
    config = ea.load_robot_config('aloha')
    assert config.source == str(expected)
    assert config.embodiment == 'bimanual'


def test_env_folder_comes_first_then_source_then_share(tmp_path, monkeypatch):
    """$PI0_ROBOT_CONFIG_PATH overrides the source tree, which overrides the share folder."""
    text = (ROBOTS / 'mock.yaml').read_text()
    _install_share(tmp_path / 'install', text, 'mock')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path / 'install'))
    monkeypatch.delenv(config_module.CONFIG_PATH_ENV, raising=False)
    assert ea.load_robot_config('mock').source == str(ROBOTS / 'mock.yaml')
    dirs = ea.robot_config_dirs()
    assert dirs[0] == ROBOTS and tmp_path / 'install' / 'share' / 'pi0_policy' / 'config' / \
        'robots' in dirs
    override = tmp_path / 'mine'
    override.mkdir()
    (override / 'mock.yaml').write_text(text.replace('control_rate_hz: 50.0',
                                                     'control_rate_hz: 25.0'))
    monkeypatch.setenv(config_module.CONFIG_PATH_ENV, str(override))
    config = ea.load_robot_config('mock')
    assert config.source == str(override / 'mock.yaml') and config.control_rate_hz == 25.0


def test_loader_works_without_ament_prefix_path(monkeypatch):
    """An unset AMENT_PREFIX_PATH (ament_index raises OSError) does not break the search."""
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    assert ea.load_robot_config('mock').name == 'mock'
