"""
Robot datasets (no rclpy): the LeRobotDataset v3 layout, episode time alignment, rosbag2 import.

Modules: ``layout`` (paths, info.json features, the dataset spec), ``video`` (mp4 through PyAV),
``stats`` (feature statistics), ``writer`` (episodes written atomically), ``reader``,
``alignment`` (fixed-rate frames from timestamped streams), ``messages`` (ROS message fields to
numpy, for messages of any origin), ``rosbag`` (rosbag2 to dataset through ``rosbags``).
"""
