"""
π0 inference fast path: the prefix K/V cache, the per-observation denoise context and the step.

The prefix (images, prompt) is run once per observation through the VLM expert and its per-layer
K/V are cached (``run_prefix``); every denoising step runs only the action expert over the suffix
(state token + H action tokens) against that cache, which is never modified.

Without autograd, per observation the suffix RoPE tables, attention mask, state token and all
flow-time embeddings are computed once (``prepare_denoise``); each denoising step (``denoise``)
then runs only the action-time MLP and the action expert with fused q/k/v and gate/up matmuls.
In float32 it is bit-identical to the autograd path (up to the MLP token blocking of long
prefixes, see ``gemma.MLP_BLOCK_ELEMENTS``). The ``Pi0Model`` methods of the same names call
these functions.

Shape letters: B batch, S prefix tokens, H horizon, A action dim, K kv heads, E head dim,
G query heads per kv head.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pi0_policy.model.gemma import _folded_bias, joint_forward, kv_scratch, KVCache
from pi0_policy.model.gemma import LayerWeights, prefix_lm_allowed, prepare_layers, rms_norm
from pi0_policy.model.gemma import rope_tables, stack_forward
import torch
from torch import nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from pi0_policy.model.pi0 import Pi0Model


@dataclasses.dataclass(frozen=True)
class PrefixCache:
    """Per-observation state reused by every denoising step (read-only)."""

    # Per layer (k, v), each (B, K, S, E), post-RoPE.
    kv: KVCache
    # (B, S) bool validity of the prefix tokens.
    valid: torch.Tensor


@dataclasses.dataclass(frozen=True)
class DenoiseContext:
    """Everything a denoising step needs that does not depend on x_t or t (one observation)."""

    # The read-only prefix cache.
    cache: PrefixCache
    # (B, 1, D_expert) float32 state token.
    state_token: torch.Tensor
    # (B, 1 + H) RoPE positions of the suffix.
    positions: torch.Tensor
    # (B, 1 + H, S + 1 + H) bool attention mask of the suffix.
    allowed: torch.Tensor
    # (B, 1 + H, 1, E) RoPE tables (``gemma.rope_tables``).
    cos: torch.Tensor
    signed_sin: torch.Tensor
    # (B, 1, (1 + H) * G, S + 1 + H) additive mask in the compute dtype.
    bias: torch.Tensor
    # Fused action-expert weights, or None (autograd enabled / unfusable: ``joint_forward``).
    layers: tuple[LayerWeights, ...] | None
    # (D_expert,) float32 ``1 + w`` of the expert's final norm.
    final_scale: torch.Tensor
    # Per layer (k, v) work buffers (B, K, S + 1 + H, E): a copy of the prefix cache followed by
    # the suffix positions each step overwrites (so a context is not thread-safe); None with
    # ``layers`` None.
    scratch: KVCache | None = None


def suffix_ar(horizon: int, device: torch.device) -> torch.Tensor:
    """Return the (1 + H,) ar markers of the suffix: 1 state, 1 first action, then 0."""
    ar = torch.zeros(1 + horizon, dtype=torch.int64, device=device)
    ar[:2] = 1
    return ar


def drop_invalid_tokens(
        emb: torch.Tensor, valid: torch.Tensor,
        positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Remove prefix tokens that are invalid in every batch element.

    Exact: such keys get zero attention weight from every valid query and do not advance the
    positions (already computed), and outputs of invalid queries are never used. This skips
    masked cameras and prompt padding.

    Args:
        emb: (B, S, D) embeddings.
        valid: (B, S) bool.
        positions: (B, S') positions, S' >= S (extra trailing columns are kept).

    Returns:
        The kept embeddings, validity and positions.
    """
    keep = valid.any(0)  # (S,)
    if bool(keep.all()):
        return emb, valid, positions
    extra = positions.shape[1] - valid.shape[1]
    keep_pos = torch.cat([keep, keep.new_ones(extra)])
    return emb[:, keep], valid[:, keep], positions[:, keep_pos]


def run_prefix(model: Pi0Model, emb: torch.Tensor, valid: torch.Tensor) -> PrefixCache:
    """
    Run the VLM layers over embedded prefix tokens and keep every layer's K/V.

    Args:
        model: The π0 model.
        emb: (B, S, D_vlm) prefix embeddings from ``Pi0Model.embed_prefix``.
        valid: (B, S) bool.

    Returns:
        The read-only cache.
    """
    positions = torch.cumsum(valid.to(torch.int64), 1) - 1
    emb, valid, positions = drop_invalid_tokens(emb, valid, positions)
    # All prefix tokens attend to each other (ar = 0); only validity restricts them.
    allowed = None if bool(valid.all()) else prefix_lm_allowed(
        torch.zeros_like(positions), valid)
    layers = None if torch.is_grad_enabled() else prepare_layers(model.vlm)
    if layers is None:
        _, kv = joint_forward([model.vlm, model.expert], [emb, None], positions, allowed,
                              build_cache=True, need_output=[False, False])
    else:
        cfg = model.config.vlm
        cos, signed_sin = rope_tables(positions, cfg.head_dim)
        bias = _folded_bias(allowed, cfg.num_heads // cfg.num_kv_heads, emb.dtype)
        _, kv = stack_forward(cfg, layers, emb, cos, signed_sin, bias, build_cache=True,
                              need_output=False)
    return PrefixCache(kv=kv, valid=valid)


def prepare_denoise(model: Pi0Model, cache: PrefixCache, state: torch.Tensor) -> DenoiseContext:
    """
    Compute once per observation what every denoising step shares.

    Args:
        model: The π0 model.
        cache: From ``Pi0Model.build_prefix_cache`` (not modified).
        state: (B, state_dim).

    Returns:
        The context for ``denoise``.
    """
    cfg = model.config.expert
    b = state.shape[0]
    t_s = 1 + model.config.action_horizon
    device = state.device
    n_valid = cache.valid.sum(1, dtype=torch.int64)  # (B,)
    positions = n_valid[:, None] + torch.arange(t_s, device=device)[None]
    suffix_valid = torch.ones(b, t_s, dtype=torch.bool, device=device)
    allowed = torch.cat([cache.valid[:, None, :].expand(b, t_s, cache.valid.shape[1]),
                         prefix_lm_allowed(suffix_ar(model.config.action_horizon, device),
                                           suffix_valid)], dim=2)
    cos, signed_sin = rope_tables(positions, cfg.head_dim)
    layers = None if torch.is_grad_enabled() else prepare_layers(model.expert)
    scratch = None if layers is None else kv_scratch(cache.kv, t_s)
    return DenoiseContext(
        cache=cache, state_token=model.state_proj(state.float())[:, None],
        positions=positions, allowed=allowed, cos=cos, signed_sin=signed_sin,
        bias=_folded_bias(allowed, cfg.num_heads // cfg.num_kv_heads, model.compute_dtype),
        layers=layers, final_scale=model.expert.norm.scale(), scratch=scratch)


def denoise(model: Pi0Model, ctx: DenoiseContext, x_t: torch.Tensor,
            time_emb: torch.Tensor) -> torch.Tensor:
    """
    Predict the velocity at (x_t, t) from a prepared context (one denoising step).

    Args:
        model: The π0 model.
        ctx: From ``prepare_denoise``.
        x_t: (B, H, A) noisy actions.
        time_emb: (B, D_expert) float32 from ``Pi0Model.time_embeddings``.

    Returns:
        (B, H, A) float32 velocity.
    """
    act = _apply(model.action_in_proj, x_t.float())
    fused = torch.cat([act, time_emb[:, None].expand_as(act)], dim=-1)
    act = _apply(model.action_time_mlp_out, F.silu(_apply(model.action_time_mlp_in, fused)))
    suffix = torch.cat([ctx.state_token, act], 1).to(model.compute_dtype)
    horizon = model.config.action_horizon
    if ctx.layers is None:
        outs, _ = joint_forward([model.vlm, model.expert], [None, suffix], ctx.positions,
                                ctx.allowed, cache=ctx.cache.kv)
        return model.action_out_proj(outs[1][:, -horizon:].float())
    hidden, _ = stack_forward(model.config.expert, ctx.layers, suffix, ctx.cos,
                              ctx.signed_sin, ctx.bias, scratch=ctx.scratch)
    return _apply(model.action_out_proj,
                  rms_norm(hidden[:, -horizon:], ctx.final_scale).float())


def _apply(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply a float32 head linear without the module-call overhead (same kernel)."""
    return F.linear(x, layer.weight, layer.bias)
