"""All rclpy code of the suite: parameters, message conversions and nodes."""
