"""Simulated robots for the demo and tests (pure Python, no rclpy)."""
