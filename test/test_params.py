"""Tests of the parameter table and its conversion into the frozen NodeConfig."""

import dataclasses

from pi0_msgs.msg import PolicyStatus
from pi0_policy.ros import params
from pi0_policy.runtime.config import NodeConfig
from pi0_policy.runtime.status import NodeState
import pytest
from rcl_interfaces.msg import ParameterType
import rclpy
from rclpy.parameter import Parameter


def test_every_parameter_is_described_typed_and_unique():
    assert len(set(params.PARAMETER_NAMES)) == len(params.PARAMETERS)
    for spec in params.PARAMETERS:
        assert spec.description.endswith('.'), spec.name
        assert spec.type in (bool, int, float, str)
        if spec.range is not None:
            assert spec.range[0] <= spec.default <= spec.range[1], spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name


def test_defaults_build_a_frozen_config():
    config = params.node_config_from_values({})
    assert isinstance(config, NodeConfig)
    assert config.policy.checkpoint is None and config.execution.control_rate_hz == 50.0
    assert config.execution.strategy == 'async'
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_age = 1.0


def test_values_map_into_the_nested_configs():
    config = params.node_config_from_values({
        'strategy': 'sync', 'execute_steps': 10, 'control_rate_hz': 20, 'checkpoint': '/ckpt',
        'asset_id': 'trossen', 'ensemble_coefficient': 0.1, 'preview': False})
    assert config.execution.strategy == 'sync' and config.execution.execute_steps == 10
    assert config.execution.dt == pytest.approx(0.05)
    assert config.policy.checkpoint == '/ckpt' and config.policy.asset_id == 'trossen'
    assert config.reporting.preview is False


def test_an_empty_device_means_the_default_device():
    # Launch files pass '' for "not given" so that they do not replace a params-file value.
    assert params.node_config_from_values({'device': ''}).policy.device == params.DEFAULT_DEVICE
    assert params.node_config_from_values({'device': 'cuda:1'}).policy.device == 'cuda:1'


@pytest.mark.parametrize('values, message', [
    ({'max_age': 0.0}, r"'max_age' is 0.0; expected a value in \[0.001, 60.0\]"),
    ({'strategy': 'fast'}, "'strategy' is 'fast'; expected one of"),
    ({'num_steps': 'ten'}, "'num_steps' is 'ten' \\(str\\); expected a int"),
    ({'device': 'gpu'}, "'device' is 'gpu'; expected 'cpu', 'cuda'"),
    ({'prompt': 'x' * 30, 'max_instruction_chars': 10}, 'at most max_instruction_chars'),
    ({'robot': ''}, "'robot' is ''"),
    ({'no_such_param': 1}, r"Unknown parameters \['no_such_param'\]"),
])
def test_bad_values_name_the_parameter(values, message):
    with pytest.raises(ValueError, match=message):
        params.node_config_from_values(values)


def test_node_states_match_the_status_message():
    for state in NodeState:
        assert getattr(PolicyStatus, f'STATE_{state.name}') == state.value


def test_declared_on_a_node_with_descriptors_and_overrides():
    rclpy.init()
    try:
        node = rclpy.create_node(
            'params_test', parameter_overrides=[Parameter('num_steps', value=3)],
            automatically_declare_parameters_from_overrides=False)
        params.declare_parameters(node)
        config = params.read_node_config(node)
        assert config.policy.num_steps == 3
        descriptor = node.describe_parameter('max_age')
        assert descriptor.type == ParameterType.PARAMETER_DOUBLE
        assert descriptor.floating_point_range[0].from_value == pytest.approx(0.001)
        assert node.describe_parameter('robot').read_only
        assert not node.set_parameters([Parameter('num_steps', value=0)])[0].successful
        assert not node.set_parameters([Parameter('robot', value='franka')])[0].successful
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
