"""
Launch the pi0 policy node with a setup's parameter file, optionally with rviz.

The per-setup launch files (bimanual, single_arm, mobile_manipulator, sim_bimanual) include it
with their own `params_file`, `robot` and `rviz_config` defaults.

Precedence: every launch argument wins over the params file. `checkpoint`, `prompt` and `device`
are empty by default, which means "not given": the params file's value (or the node's default)
applies. String arguments stay strings (`prompt:=yes`, `prompt:='Task: fold the towel'`). The
arguments reach the node in a generated params file passed before and after `params_file`
(pi0_policy.ros.launch_overrides explains why both).

rviz starts before the policy node: if rviz2 is missing the launch fails before any node runs.
The nodes exit (Ctrl-C path: final hold) when the launch process dies, even by SIGKILL.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from pi0_policy.ros.launch_substitutions import NodeOverrides

PACKAGE = 'pi0_policy'
NODE_NAME = 'pi0_policy_node'


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: declared arguments, rviz and the policy node."""
    share = FindPackageShare(PACKAGE)
    sim_time = LaunchConfiguration('use_sim_time')
    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config', 'bimanual.yaml']),
            description='Node parameter overrides (config/<setup>.yaml or your own file).'),
        DeclareLaunchArgument(
            'checkpoint', default_value='',
            description='pi0 checkpoint folder; empty: the params file value, else a tiny '
            'random model.'),
        DeclareLaunchArgument(
            'robot', default_value='aloha',
            description='Robot config name (config/robots/<name>.yaml) or a YAML path.'),
        DeclareLaunchArgument('prompt', default_value='',
                              description='Initial language instruction; empty: the params '
                              'file value, else none.'),
        DeclareLaunchArgument('device', default_value='',
                              description="Torch device: 'cpu', 'cuda' or 'cuda:<index>'; "
                              "empty: the params file value, else 'cpu'."),
        DeclareLaunchArgument(
            'policy_backend', default_value='',
            description="Where pi0 runs: 'inprocess', 'subprocess' (a child server on loopback) "
            "or 'remote' (policy_url); empty: the params file value, else 'inprocess'."),
        DeclareLaunchArgument('policy_url', default_value='', description='remote: the '
                              "openpi-protocol server, e.g. 'ws://gpu-box:8000'."),
        DeclareLaunchArgument('policy_api_key', default_value='', description='remote: the key.'),
        DeclareLaunchArgument('rviz', default_value='false', description='Start rviz2.'),
        DeclareLaunchArgument(
            'rviz_config', default_value=PathJoinSubstitution([share, 'config', 'bimanual.rviz']),
            description='rviz2 display config (config/<setup>.rviz).'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use the /clock topic (simulation) as time source.'),
    ]
    overrides = NodeOverrides(
        NODE_NAME, flags={'use_sim_time': sim_time},
        strings={name: LaunchConfiguration(name)
                 for name in ('robot', 'checkpoint', 'prompt', 'device', 'policy_backend',
                              'policy_url', 'policy_api_key')})
    rviz = Node(package='rviz2', executable='rviz2', output='screen',
                arguments=['-d', LaunchConfiguration('rviz_config')],
                parameters=[{'use_sim_time': ParameterValue(sim_time, value_type=bool)}],
                condition=IfCondition(LaunchConfiguration('rviz')))
    policy = Node(
        package=PACKAGE, executable='pi0_policy_node', name=NODE_NAME, output='screen',
        arguments=['--exit-with-parent'],  # SIGINT (final hold) if launch dies: no orphan
        # First and last: the launch arguments win over params_file (see the module docstring).
        parameters=[overrides, LaunchConfiguration('params_file'), overrides])
    return LaunchDescription(arguments + [rviz, policy])
