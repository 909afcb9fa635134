"""
Build the node's policy backend from its frozen ``PolicyLoadConfig`` (no rclpy).

``inprocess`` loads ``Pi0Policy`` in the caller's process; ``subprocess`` starts
``pi0-policy serve`` as a child on loopback with the same model settings and talks to it;
``remote`` connects to any openpi-protocol server at ``url``. All three return a
``PolicyBackend`` whose ``infer`` gives robot-native chunks, so chunk execution, safety and
status do not change with the backend.
"""

from __future__ import annotations

from collections.abc import Callable

from embodiment_adapters import EmbodimentAdapter
from pi0_policy.runtime.config import BACKEND_REMOTE, BACKEND_SUBPROCESS, PolicyLoadConfig
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.serving.child import SubprocessPolicy
from pi0_policy.serving.client import PolicyBackend, RemoteConfig, RemotePolicy


def serve_arguments(policy: PolicyLoadConfig) -> list[str]:
    """Return the ``pi0-policy serve`` options that load the model ``policy`` describes."""
    args = ['--device', policy.device, '--dtype', policy.dtype, '--num-steps',
            str(policy.num_steps), '--seed', str(policy.seed), '--action-mode',
            policy.action_mode, '--torch-threads', str(policy.torch_threads)]
    for flag, value in (('--checkpoint', policy.checkpoint), ('--asset-id', policy.asset_id),
                        ('--tokenizer', policy.tokenizer)):
        if value:
            args += [flag, value]
    return args


def load_backend(policy: PolicyLoadConfig, adapter: EmbodimentAdapter, *, robot: str,
                 on_disconnect: Callable[[str], None] | None = None) -> PolicyBackend:
    """
    Load the backend ``policy.backend`` names (not yet warmed up).

    Args:
        policy: the model and backend settings.
        adapter: the robot's adapter.
        robot: robot config name or path (handed to a child server).
        on_disconnect: subprocess/remote: called with the reason when the connection drops.

    Returns:
        The backend.

    Raises:
        ValueError: bad settings, or a server that serves another robot.
        ConnectionError: remote server unreachable (the message names the URL and the reason).
        RuntimeError: the child server did not start (its output is quoted).

    """
    if policy.backend == BACKEND_REMOTE:
        return RemotePolicy(adapter, RemoteConfig(url=policy.url, api_key=policy.api_key,
                                                  request_timeout=policy.request_timeout),
                            on_disconnect=on_disconnect)
    if policy.backend == BACKEND_SUBPROCESS:
        return SubprocessPolicy(adapter, robot, serve_arguments(policy),
                                request_timeout=policy.request_timeout,
                                niceness=policy.inference_niceness,
                                on_disconnect=on_disconnect)
    return Pi0Policy.from_checkpoint(
        policy.checkpoint, adapter, device=policy.device, dtype=policy.dtype,
        num_steps=policy.num_steps, asset_id=policy.asset_id, seed=policy.seed,
        action_mode=policy.action_mode, tokenizer_path=policy.tokenizer,
        rtc_schedule=policy.rtc_schedule, rtc_max_guidance_weight=policy.rtc_max_guidance_weight)
