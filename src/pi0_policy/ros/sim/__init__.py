"""
ROS tooling of the simulator: the MuJoCo ALOHA sim node, demo orchestration, synthetic robot.

Kept apart from the policy node's modules: nothing in ``pi0_policy.ros`` outside this subpackage
imports from it. The pure simulator code (scene, plan, report) lives in :mod:`pi0_policy.sim`.
"""
