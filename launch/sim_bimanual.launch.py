"""
Launch the simulated bimanual ALOHA (MuJoCo) driven by the pi0 policy node, optionally rviz.

One argument, ``use_sim_time``, sets both the sim's ``sim_time`` (it publishes /clock) and every
other node's ``use_sim_time``: the two must match, or the pi0 node waits on a clock that never
comes (or stamps commands in another time base). Unlike ``pi0_sim_demo --time auto``, the launch
file does not measure the machine: pass ``use_sim_time:=true`` where the sim cannot keep real
time (its log then shows lag events); for a full checkpoint on a CPU also set ``strategy: sync``
in config/sim_bimanual.yaml. Launch arguments win over ``params_file`` for both nodes.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare
from pi0_policy.ros.launch_substitutions import NodeOverrides

PACKAGE = 'pi0_policy'
SETUP = 'sim_bimanual'
SIM_NODE_NAME = 'aloha_sim'


def generate_launch_description() -> LaunchDescription:
    """Return the sim node plus pi0_policy.launch.py with the sim's parameter file."""
    share = FindPackageShare(PACKAGE)
    params_file = LaunchConfiguration('params_file')
    sim_time = LaunchConfiguration('use_sim_time')
    arguments = [
        DeclareLaunchArgument('robot', default_value='aloha',
                              description='Robot config the sim serves and the policy drives.'),
        DeclareLaunchArgument('prompt', default_value='transfer the cube to the other arm',
                              description='Initial language instruction.'),
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config', f'{SETUP}.yaml']),
            description='Parameters of both nodes (config/sim_bimanual.yaml or your own file).'),
        DeclareLaunchArgument(
            'rviz_config', default_value=PathJoinSubstitution([share, 'config', f'{SETUP}.rviz']),
            description='rviz2 display config (rviz:=true).'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Run the sim on simulated time (/clock, sim_time) '
                              'when the machine cannot keep real time; sets use_sim_time of '
                              'every node to match.'),
    ]
    overrides = NodeOverrides(SIM_NODE_NAME, strings={'robot': LaunchConfiguration('robot')},
                              flags={'sim_time': sim_time})
    sim = Node(
        package=PACKAGE, executable='aloha_sim_node', name=SIM_NODE_NAME, output='screen',
        arguments=['--exit-with-parent'],
        # First and last: the launch arguments win over params_file (see pi0_policy.launch.py).
        parameters=[overrides, params_file, overrides])
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([share, 'launch', 'pi0_policy.launch.py'])),
        launch_arguments={name: LaunchConfiguration(name) for name in (
            'robot', 'prompt', 'params_file', 'rviz_config', 'use_sim_time')}.items())
    return LaunchDescription(arguments + [sim, policy])
