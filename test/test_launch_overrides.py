"""
Launch arguments win over parameter files: the overrides file, and rclpy's real precedence.

The launch files pass ``parameters=[overrides, params_file, overrides]``. These tests start real
rclpy nodes with exactly those ``--params-file`` arguments (what launch_ros hands the process)
and read the parameters back, with the shipped setup YAMLs and with user files keyed by node
name and by ``/**``. A control shows the old layering (launch values in a ``/**`` dict) losing
to a node-keyed YAML, so the precedence tests can fail.
"""

import pathlib

from pi0_policy.ros.launch_overrides import (overrides_document, parse_flag, WILDCARD,
                                             write_params_file)
import pytest
import rclpy
from rclpy.node import Node
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_NAME = 'pi0_policy_node'
SETUPS = ('bimanual', 'single_arm', 'mobile_manipulator', 'sim_bimanual')


def node_parameters(files: list[str], node_name: str = NODE_NAME) -> dict:
    """Start a node with ``--params-file`` per file (in order) and return its parameters."""
    args = ['--ros-args']
    for path in files:
        args += ['--params-file', str(path)]
    context = rclpy.Context()
    rclpy.init(args=args, context=context)
    try:
        node = Node(node_name, context=context,
                    automatically_declare_parameters_from_overrides=True)
        try:
            return {name: p.value for name, p in node._parameters.items()}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def write_yaml(path: pathlib.Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_string_arguments_stay_strings_and_empty_ones_are_left_out():
    document = overrides_document(
        NODE_NAME, strings={'prompt': 'yes', 'robot': 'ur5e', 'checkpoint': '', 'device': '1'},
        flags={'use_sim_time': 'True'})
    assert list(document) == [WILDCARD, NODE_NAME, f'/{NODE_NAME}']
    assert document[WILDCARD] == {'ros__parameters': {}}
    assert document[NODE_NAME]['ros__parameters'] == {
        'prompt': 'yes', 'robot': 'ur5e', 'device': '1', 'use_sim_time': True}
    assert document[f'/{NODE_NAME}'] == document[NODE_NAME]


@pytest.mark.parametrize('text,value', [('true', True), ('False', False), ('1', True),
                                        ('0', False), (' TRUE ', True)])
def test_flags_are_read_like_if_condition(text, value):
    assert parse_flag('rviz', text) is value


def test_a_flag_that_is_not_a_flag_names_the_argument_and_the_choices():
    with pytest.raises(ValueError, match=r"use_sim_time:='maybe'.*expected true or false"):
        overrides_document(NODE_NAME, flags={'use_sim_time': 'maybe'})
    with pytest.raises(ValueError, match='node name'):
        overrides_document('/**')


def test_yaml_typed_strings_reach_the_node_as_strings(tmp_path):
    prompts = ['yes', 'Task: fold the towel', '1.5', 'true', '[a, b]', "it's {x}: y"]
    for prompt in prompts:
        path = write_params_file(overrides_document(NODE_NAME, strings={'prompt': prompt}),
                                 str(tmp_path))
        assert node_parameters([path])['prompt'] == prompt


@pytest.mark.parametrize('setup', SETUPS)
def test_launch_arguments_win_over_each_setup_yaml(setup, tmp_path):
    setup_file = ROOT / 'config' / f'{setup}.yaml'
    expected = yaml.safe_load(setup_file.read_text())[NODE_NAME]['ros__parameters']
    overrides = write_params_file(overrides_document(
        NODE_NAME, strings={'robot': 'mock', 'prompt': 'yes', 'checkpoint': ''},
        flags={'use_sim_time': 'true'}), str(tmp_path))
    values = node_parameters([overrides, setup_file, overrides])
    assert values['robot'] == 'mock'
    assert values['prompt'] == 'yes'
    assert values['use_sim_time'] is True
    assert 'checkpoint' not in values  # not given: the node's default applies
    # Everything else comes from the setup YAML.
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize('user_key', [NODE_NAME, f'/{NODE_NAME}', WILDCARD])
def test_launch_arguments_win_over_a_user_params_file_however_it_is_keyed(user_key, tmp_path):
    user = write_yaml(tmp_path / 'user.yaml', {user_key: {'ros__parameters': {
        'robot': 'franka', 'prompt': 'from the file', 'max_age': 0.33}}})
    given = write_params_file(overrides_document(NODE_NAME, strings={'robot': 'ur5e'}),
                              str(tmp_path))
    values = node_parameters([given, user, given])
    assert values['robot'] == 'ur5e'
    # Not given at launch: the file's values stand.
    assert values['prompt'] == 'from the file'
    assert values['max_age'] == 0.33


def test_control_the_old_layering_loses_to_a_node_keyed_yaml(tmp_path):
    # launch_ros writes a parameters dict under /** for a node without a namespace; rclpy then
    # ranks the node-keyed YAML above it whatever the order. This is what the overrides fix.
    setup = write_yaml(tmp_path / 'setup.yaml', {NODE_NAME: {'ros__parameters': {
        'robot': 'franka'}}})
    wildcard = write_yaml(tmp_path / 'dict.yaml', {WILDCARD: {'ros__parameters': {
        'robot': 'ur5e'}}})
    assert node_parameters([wildcard, setup, wildcard])['robot'] == 'franka'
    assert node_parameters([setup, wildcard])['robot'] == 'ur5e'


def test_sim_node_arguments_win_over_the_sim_yaml(tmp_path):
    setup_file = ROOT / 'config' / 'sim_bimanual.yaml'
    overrides = write_params_file(overrides_document(
        'aloha_sim', strings={'robot': 'aloha'}, flags={'sim_time': 'true'}), str(tmp_path))
    values = node_parameters([overrides, setup_file, overrides], node_name='aloha_sim')
    assert values['sim_time'] is True and values['robot'] == 'aloha'
    assert values['task'] == 'transfer_cube'
    assert 'max_age' not in values  # the policy node's section does not leak into the sim's


def test_node_overrides_substitution_where_launch_exists(tmp_path):
    pytest.importorskip('launch_ros', reason='launch_ros has no wheel in this toolchain')
    from launch import LaunchContext
    from launch.substitutions import LaunchConfiguration
    from pi0_policy.ros.launch_substitutions import NodeOverrides

    context = LaunchContext()
    context.launch_configurations.update(prompt='yes', sim='false')
    substitution = NodeOverrides(NODE_NAME, strings={'prompt': LaunchConfiguration('prompt')},
                                 flags={'use_sim_time': LaunchConfiguration('sim')})
    path = substitution.perform(context)
    assert yaml.safe_load(pathlib.Path(path).read_text())[NODE_NAME]['ros__parameters'] == {
        'prompt': 'yes', 'use_sim_time': False}
    assert 'prompt' in substitution.describe()
