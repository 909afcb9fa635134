"""Launch the pi0 policy node for a bimanual robot (ALOHA), optionally with rviz."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'pi0_policy'
SETUP = 'bimanual'


def generate_launch_description() -> LaunchDescription:
    """Return pi0_policy.launch.py with this setup's parameter file and robot."""
    share = FindPackageShare(PACKAGE)
    robot = DeclareLaunchArgument(
        'robot', default_value='aloha',
        description='Robot config name (config/robots/<name>.yaml) or a YAML path.')
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([share, 'launch', 'pi0_policy.launch.py'])),
        launch_arguments={
            'params_file': PathJoinSubstitution([share, 'config', f'{SETUP}.yaml']),
            'robot': LaunchConfiguration('robot'),
        }.items())
    return LaunchDescription([robot, policy])
