"""
Pure-PyTorch π0 (no rclpy, no I/O except checkpoint loading).

Public API: ``Pi0Config`` (with ``GemmaConfig``, ``SiglipConfig``), ``Pi0Model``,
``build_empty``, ``init_random``, ``load_pi0`` and the time-grid helpers.
"""

from pi0_policy.model.checkpoint import CheckpointInfo, load_pi0
from pi0_policy.model.config import GemmaConfig, Pi0Config, SiglipConfig
from pi0_policy.model.pi0 import build_empty, init_random, lerobot_time_grid, openpi_time_grid
from pi0_policy.model.pi0 import Pi0Model, PrefixCache, sample_time, TIME_GRID_RULES

__all__ = [
    'CheckpointInfo', 'GemmaConfig', 'Pi0Config', 'Pi0Model', 'PrefixCache', 'SiglipConfig',
    'TIME_GRID_RULES', 'build_empty', 'init_random', 'lerobot_time_grid', 'load_pi0',
    'openpi_time_grid', 'sample_time',
]
