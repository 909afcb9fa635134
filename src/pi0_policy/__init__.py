"""π0 vision-language-action policy for ROS 2: model, runtime and ROS wiring."""

__version__ = '0.1.0'
