"""
Pure-PyTorch π0, the model only (no rclpy, no I/O except checkpoint loading).

Public API: ``Pi0Config`` (with ``GemmaConfig``, ``SiglipConfig``), ``Pi0Model``,
``build_empty``, ``init_random``, ``load_pi0``, the time-grid helpers and RTC's ``ChunkPrior``.
Modules in reading order: ``config``, ``layers``, ``siglip``, ``gemma``, ``flow`` (flow-time
helpers), ``rtc`` (real-time chunking), ``pi0`` (the network, sampling, loss), ``init`` (random
initialisation), ``checkpoint``. Fast inference lives in ``pi0_policy.engine``.
"""

from pi0_policy.model.checkpoint import CheckpointInfo, load_pi0
from pi0_policy.model.config import GemmaConfig, Pi0Config, SiglipConfig
from pi0_policy.model.flow import lerobot_time_grid, openpi_time_grid, sample_time
from pi0_policy.model.flow import TIME_GRID_RULES
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty, Pi0Model, PrefixCache
from pi0_policy.model.rtc import ChunkPrior

__all__ = [
    'CheckpointInfo', 'ChunkPrior', 'GemmaConfig', 'Pi0Config', 'Pi0Model', 'PrefixCache',
    'SiglipConfig', 'TIME_GRID_RULES', 'build_empty', 'init_random', 'lerobot_time_grid',
    'load_pi0', 'openpi_time_grid', 'sample_time',
]
