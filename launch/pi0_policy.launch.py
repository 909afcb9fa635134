"""
Launch the pi0 policy node with a setup's parameter file, optionally with rviz.

The per-setup launch files (bimanual, single_arm, mobile_manipulator, sim_bimanual) include it
with their own `params_file` and `robot` defaults.

Precedence: `robot` and `use_sim_time` override the params file. `checkpoint`, `prompt` and
`device` only fill in what the params file leaves unset: they are passed before it, and their
empty defaults mean "not given" (the node reads an empty device as 'cpu', an empty checkpoint as
the tiny random model). To change a value the params file sets, edit that file or pass another
`params_file`; the instruction can also be changed at run time (~/instruction, ~/set_instruction).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'pi0_policy'


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: declared arguments, the policy node and rviz."""
    share = FindPackageShare(PACKAGE)
    sim_time = LaunchConfiguration('use_sim_time')
    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config', 'bimanual.yaml']),
            description='Node parameter overrides (config/<setup>.yaml).'),
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
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start rviz2 with config/pi0.rviz.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use the /clock topic (simulation) as time source.'),
    ]
    fallbacks = {'checkpoint': LaunchConfiguration('checkpoint'),
                 'prompt': LaunchConfiguration('prompt'), 'device': LaunchConfiguration('device')}
    policy = Node(
        package=PACKAGE, executable='pi0_policy_node', name='pi0_policy_node', output='screen',
        # Order matters: later entries override earlier ones (see the module docstring).
        parameters=[fallbacks, LaunchConfiguration('params_file'), {
            'robot': LaunchConfiguration('robot'),
            'use_sim_time': sim_time,
        }])
    rviz = Node(package='rviz2', executable='rviz2',
                arguments=['-d', PathJoinSubstitution([share, 'config', 'pi0.rviz'])],
                parameters=[{'use_sim_time': sim_time}],
                condition=IfCondition(LaunchConfiguration('rviz')))
    return LaunchDescription(arguments + [policy, rviz])
