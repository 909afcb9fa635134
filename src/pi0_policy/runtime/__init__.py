"""Pure runtime: transforms, the Pi0Policy facade, chunk execution and safety (no rclpy)."""
