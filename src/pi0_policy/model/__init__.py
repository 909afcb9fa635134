"""
Pure-PyTorch π0 (no rclpy, no I/O except checkpoint loading).

Public API: ``Pi0Config`` (with ``GemmaConfig``, ``SiglipConfig``), ``Pi0Model``,
``build_empty``, ``init_random``, ``load_pi0`` and the time-grid helpers; the compute policy of
bfloat16 weights lives in ``pi0_policy.model.compute``. Modules: ``config``, ``siglip``,
``gemma``, ``pi0`` (the network), ``denoise`` (prefix cache and denoising fast path), ``flow``
(flow-time helpers), ``init`` (random initialisation), ``checkpoint``, ``compute``.
"""

from pi0_policy.model.checkpoint import CheckpointInfo, load_pi0
from pi0_policy.model.config import GemmaConfig, Pi0Config, SiglipConfig
from pi0_policy.model.denoise import DenoiseContext, PrefixCache
from pi0_policy.model.flow import lerobot_time_grid, openpi_time_grid, sample_time
from pi0_policy.model.flow import TIME_GRID_RULES
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty, Pi0Model

__all__ = [
    'CheckpointInfo', 'DenoiseContext', 'GemmaConfig', 'Pi0Config', 'Pi0Model', 'PrefixCache',
    'SiglipConfig', 'TIME_GRID_RULES', 'build_empty', 'init_random', 'lerobot_time_grid',
    'load_pi0', 'openpi_time_grid', 'sample_time',
]
