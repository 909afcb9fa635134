"""
Launch the simulated bimanual ALOHA (MuJoCo) driven by the pi0 policy node, optionally rviz.

One argument, ``use_sim_time``, sets both the sim's ``sim_time`` (it publishes /clock) and every
other node's ``use_sim_time``: the two must match, or the pi0 node waits on a clock that never
comes (or stamps commands in another time base). Unlike ``pi0_sim_demo --time auto``, the launch
file does not measure the machine: pass ``use_sim_time:=true`` where the sim cannot keep real
time (its log then shows lag events); for a full checkpoint on a CPU also set ``strategy: sync``
in config/sim_bimanual.yaml.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'pi0_policy'
SETUP = 'sim_bimanual'


def generate_launch_description() -> LaunchDescription:
    """Return the sim node plus pi0_policy.launch.py with the sim's parameter file."""
    share = FindPackageShare(PACKAGE)
    params_file = PathJoinSubstitution([share, 'config', f'{SETUP}.yaml'])
    sim_time = LaunchConfiguration('use_sim_time')
    arguments = [
        DeclareLaunchArgument('robot', default_value='aloha',
                              description='Robot config the sim serves and the policy drives.'),
        DeclareLaunchArgument('prompt', default_value='transfer the cube to the other arm',
                              description='Initial language instruction.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Run the sim on simulated time (/clock, sim_time) '
                              'when the machine cannot keep real time; sets use_sim_time of '
                              'every node to match.'),
    ]
    sim = Node(
        package=PACKAGE, executable='aloha_sim_node', name='aloha_sim', output='screen',
        parameters=[params_file, {'robot': LaunchConfiguration('robot'), 'sim_time': sim_time}])
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([share, 'launch', 'pi0_policy.launch.py'])),
        launch_arguments={
            'params_file': params_file,
            'robot': LaunchConfiguration('robot'),
            'prompt': LaunchConfiguration('prompt'),
            'use_sim_time': sim_time,
        }.items())
    return LaunchDescription(arguments + [sim, policy])
