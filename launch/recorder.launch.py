"""
Launch pi0_recorder: record a robot's cameras, joint states and commands into a LeRobot dataset.

Episodes are started, stopped and discarded with the services ~/start, ~/stop and ~/discard
(std_srvs/Trigger), e.g. ``ros2 service call /pi0_recorder/start std_srvs/srv/Trigger``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'pi0_policy'


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: declared arguments and the recorder node."""
    arguments = [
        DeclareLaunchArgument(
            'robot', default_value='aloha',
            description='Robot config name (config/robots/<name>.yaml) or a YAML path.'),
        DeclareLaunchArgument('dataset_dir', default_value='recordings/dataset',
                              description='LeRobot dataset folder to create or extend.'),
        DeclareLaunchArgument('task', default_value='',
                              description='Task instruction of the episodes.'),
        DeclareLaunchArgument('fps', default_value='0',
                              description='Dataset frame rate (Hz); 0: the robot control rate.'),
        DeclareLaunchArgument('cameras', default_value='',
                              description='Comma-separated cameras; empty: those of the model.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use the /clock topic (simulation) as time source.'),
    ]
    recorder = Node(
        package=PACKAGE, executable='pi0_recorder', name='pi0_recorder', output='screen',
        parameters=[{
            'robot': ParameterValue(LaunchConfiguration('robot'), value_type=str),
            'dataset_dir': ParameterValue(LaunchConfiguration('dataset_dir'), value_type=str),
            'task': ParameterValue(LaunchConfiguration('task'), value_type=str),
            'fps': ParameterValue(LaunchConfiguration('fps'), value_type=int),
            'cameras': ParameterValue(LaunchConfiguration('cameras'), value_type=str),
            'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool),
        }])
    return LaunchDescription(arguments + [recorder])
