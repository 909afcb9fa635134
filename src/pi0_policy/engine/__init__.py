"""
Fast π0 inference, built from a ``Pi0Model`` and proven equal to it by test (no rclpy).

Modules: ``compute`` (compute-dtype policy per device, chunked weight upcasting, fused weight
storage), ``gemma`` (the single-expert Gemma stack with fused weights and K/V work buffers),
``engine`` (``Pi0Engine``: prefix cache, per-observation denoise context, sampling with RTC).
"""

from pi0_policy.engine.engine import DenoiseContext, Pi0Engine

__all__ = ['DenoiseContext', 'Pi0Engine']
