"""Launch the pi0 policy node for a single-arm robot (Franka, or UR5e with robot:=ur5e)."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'pi0_policy'
SETUP = 'single_arm'


def generate_launch_description() -> LaunchDescription:
    """Return pi0_policy.launch.py with this setup's parameter file, robot and rviz view."""
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'robot', default_value='franka',
            description='Robot config name (config/robots/<name>.yaml) or a YAML path.'),
        DeclareLaunchArgument(
            'policy_backend', default_value='subprocess',
            description="Where pi0 runs: 'subprocess' (a child server on loopback: the control "
            "process runs no model code), 'inprocess' or 'remote' (with policy_url)."),
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config', f'{SETUP}.yaml']),
            description='Node parameter overrides (config/<setup>.yaml or your own file).'),
        DeclareLaunchArgument(
            'rviz_config', default_value=PathJoinSubstitution([share, 'config', f'{SETUP}.rviz']),
            description='rviz2 display config (rviz:=true).'),
    ]
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([share, 'launch', 'pi0_policy.launch.py'])),
        launch_arguments={name: LaunchConfiguration(name)
                          for name in ('robot', 'params_file', 'rviz_config',
                                       'policy_backend')}.items())
    return LaunchDescription(arguments + [policy])
