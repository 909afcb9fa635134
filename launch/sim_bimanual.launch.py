"""Launch the simulated bimanual ALOHA (MuJoCo) driven by the pi0 policy node, optionally rviz."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'pi0_policy'
SETUP = 'sim_bimanual'


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: declared arguments, the sim, the policy node and rviz."""
    share = FindPackageShare(PACKAGE)
    params_file = PathJoinSubstitution([share, 'config', f'{SETUP}.yaml'])
    rviz_config = PathJoinSubstitution([share, 'config', 'pi0.rviz'])
    sim_time = LaunchConfiguration('use_sim_time')
    arguments = [
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='pi0 checkpoint folder; empty runs a tiny random model '
                              '(the arms then move meaninglessly).'),
        DeclareLaunchArgument('robot', default_value='aloha',
                              description='Robot config the sim serves and the policy drives.'),
        DeclareLaunchArgument('prompt', default_value='transfer the cube to the other arm',
                              description='Initial language instruction.'),
        DeclareLaunchArgument('device', default_value='cpu',
                              description="Torch device: 'cpu', 'cuda' or 'cuda:<index>'."),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start rviz2 with config/pi0.rviz.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Run the sim on simulated time (/clock) when the '
                              'machine cannot keep real time; all nodes follow it.'),
    ]
    sim = Node(
        package=PACKAGE, executable='aloha_sim_node', name='aloha_sim', output='screen',
        parameters=[params_file, {'robot': LaunchConfiguration('robot'), 'sim_time': sim_time}])
    policy = Node(
        package=PACKAGE, executable='pi0_policy_node', name='pi0_policy_node', output='screen',
        parameters=[params_file, {
            'checkpoint': LaunchConfiguration('checkpoint'),
            'robot': LaunchConfiguration('robot'),
            'prompt': LaunchConfiguration('prompt'),
            'device': LaunchConfiguration('device'),
            'use_sim_time': sim_time,
        }])
    rviz = Node(package='rviz2', executable='rviz2', arguments=['-d', rviz_config],
                parameters=[{'use_sim_time': sim_time}],
                condition=IfCondition(LaunchConfiguration('rviz')))
    return LaunchDescription(arguments + [sim, policy, rviz])
