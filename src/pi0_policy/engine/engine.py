"""
Fast π0 inference built from a ``Pi0Model``: same outputs, less time.

``Pi0Engine(model)`` prepares its own inference weights from the model (fused q/k/v and gate/up
matmuls, float32 norm scales; ``pi0_policy.engine.gemma``), chooses the compute dtype for the
device (``pi0_policy.engine.compute``), and runs sampling as:

- the prefix (images, prompt) once per observation through the VLM (``run_prefix``), keeping the
  per-layer K/V;
- per observation, everything the denoising steps share (``prepare_denoise``: suffix RoPE tables,
  attention mask, state token, K/V work buffers);
- per step, only the action-time MLP and the action expert (``denoise``), optionally through
  ``torch.compile``.

RTC guidance needs a vector-Jacobian product through the action expert; the engine's step is
differentiable in x_t too (its in-place K/V buffer writes and GELU product are autograd-safe), so
guided steps run the same fused path forward and backward.
``test/test_engine.py`` proves the engine equal to the model.

Shape letters: B batch, S prefix tokens, H horizon, A action dim, K kv heads, E head dim,
G query heads per kv head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

from pi0_policy.engine.compute import check_policy, POLICY_AUTO, resolve_compute_dtype
from pi0_policy.engine.gemma import kv_scratch, LayerWeights, rope_tables, stack_forward
from pi0_policy.engine.gemma import StackWeights
from pi0_policy.model.flow import time_embedding
from pi0_policy.model.gemma import folded_bias, rms_norm
from pi0_policy.model.pi0 import drop_invalid_tokens
from pi0_policy.model.pi0 import euler_sample, Pi0Model, PrefixCache, suffix_allowed
from pi0_policy.model.rtc import ChunkPrior
import torch
from torch import nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class DenoiseContext:
    """Everything a denoising step needs that does not depend on x_t or t (one observation)."""

    # The read-only prefix cache.
    cache: PrefixCache
    # (B, state_dim) the state it was prepared for.
    state: torch.Tensor
    # (B, 1, D_expert) float32 state token.
    state_token: torch.Tensor
    # (B, 1 + H, 1, E) RoPE tables (``gemma.rope_tables``).
    cos: torch.Tensor
    signed_sin: torch.Tensor
    # (B, 1, (1 + H) * G, S + 1 + H) additive mask in the compute dtype.
    bias: torch.Tensor
    # Fused action-expert weights.
    layers: tuple[LayerWeights, ...]
    # (D_expert,) float32 ``1 + w`` of the expert's final norm.
    final_scale: torch.Tensor
    # Per layer (k, v) work buffers (B, K, S + 1 + H, E): a copy of the prefix cache followed by
    # the suffix positions each step overwrites (so a context is not thread-safe).
    scratch: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class Pi0Engine:
    """
    Fast inference of a ``Pi0Model`` (no autograd except RTC guidance; see the module docstring).

    The engine shares the model's parameters (its fused tensors back them, one copy in memory)
    and sets the model's compute dtype to the engine's, so the model's own path (used for RTC
    guidance) runs in the same dtype.
    """

    def __init__(self, model: Pi0Model, *, policy: str = POLICY_AUTO,
                 compile: bool = False) -> None:  # noqa: A002 (the public option's name)
        """
        Build the engine.

        Args:
            model: The π0 network (eval mode; stays usable on its own).
            policy: Compute policy for bfloat16 storage ('auto', 'storage', 'float32').
            compile: Run the denoising step through ``torch.compile`` (compiled on first use).

        Raises:
            ValueError: On an unknown policy.
        """
        check_policy(policy)
        self.model = model
        self.config = model.config
        self.policy = policy
        weight = model.vlm.layers[0].self_attn.q_proj.weight
        self.compute_dtype = resolve_compute_dtype(weight.dtype, weight.device, policy)
        model.set_compute_dtype(self.compute_dtype)
        self._vlm = StackWeights(model.vlm)
        self._expert = StackWeights(model.expert)
        self._step: Callable[..., torch.Tensor] = self.denoise
        if compile:
            self._step = torch.compile(self.denoise, dynamic=False)

    def prepare(self) -> bool:
        """Fuse the weights now (otherwise on first use); return whether all could be fused."""
        return self._vlm.layers() is not None and self._expert.layers() is not None

    # ------------------------------------------------------------------------------- stages
    def embed_prefix(self, images: torch.Tensor, image_masks: torch.Tensor,
                     tokens: torch.Tensor,
                     token_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prefix in the compute dtype (``Pi0Model.embed_prefix``)."""
        return self.model.embed_prefix(images, image_masks, tokens, token_masks,
                                       dtype=self.compute_dtype)

    def run_prefix(self, emb: torch.Tensor, valid: torch.Tensor) -> PrefixCache:
        """
        Run the VLM layers over embedded prefix tokens and keep every layer's K/V.

        Args:
            emb: (B, S, D_vlm) prefix embeddings from ``embed_prefix``.
            valid: (B, S) bool.

        Returns:
            The read-only cache.
        """
        positions = torch.cumsum(valid.to(torch.int64), 1) - 1
        emb, valid, positions = drop_invalid_tokens(emb, valid, positions)
        cfg = self.config.vlm
        # All prefix tokens attend to each other (ar = 0); only validity restricts them.
        allowed = None
        if not bool(valid.all()):
            allowed = valid[:, None, :] & valid[:, :, None]
        cos, signed_sin = rope_tables(positions, cfg.head_dim)
        bias = folded_bias(allowed, cfg.num_heads // cfg.num_kv_heads, emb.dtype)
        _, kv = stack_forward(cfg, self._layers(self._vlm), emb, cos, signed_sin, bias,
                              build_cache=True, need_output=False)
        return PrefixCache(kv=kv, valid=valid)

    def prepare_denoise(self, cache: PrefixCache, state: torch.Tensor) -> DenoiseContext:
        """
        Compute once per observation what every denoising step shares.

        Args:
            cache: From ``run_prefix`` (not modified).
            state: (B, state_dim).

        Returns:
            The context for ``denoise``.
        """
        model, cfg = self.model, self.config.expert
        horizon = self.config.action_horizon
        n_valid = cache.valid.sum(1, dtype=torch.int64)  # (B,)
        positions = n_valid[:, None] + torch.arange(1 + horizon, device=state.device)[None]
        cos, signed_sin = rope_tables(positions, cfg.head_dim)
        return DenoiseContext(
            cache=cache, state=state,
            state_token=_apply(model.state_proj, state.float())[:, None],
            cos=cos, signed_sin=signed_sin,
            bias=folded_bias(suffix_allowed(cache.valid, horizon),
                             cfg.num_heads // cfg.num_kv_heads, self.compute_dtype),
            layers=self._layers(self._expert),
            final_scale=self._expert.scale(model.expert.norm.weight),
            scratch=kv_scratch(cache.kv, 1 + horizon))

    def time_embeddings(self, times: torch.Tensor) -> torch.Tensor:
        """
        Embed flow times for ``denoise`` (any leading shape).

        Args:
            times: (...,) flow times.

        Returns:
            (..., D_expert) float32.
        """
        flat = time_embedding(times.reshape(-1), self.config.expert.width)
        return flat.reshape(*times.shape, -1)

    def denoise(self, ctx: DenoiseContext, x_t: torch.Tensor,
                time_emb: torch.Tensor) -> torch.Tensor:
        """
        Predict the velocity at (x_t, t) from a prepared context (one denoising step).

        Args:
            ctx: From ``prepare_denoise``.
            x_t: (B, H, A) noisy actions.
            time_emb: (B, D_expert) or per action (B, H, D_expert), float32, from
                ``time_embeddings``.

        Returns:
            (B, H, A) float32 velocity.
        """
        model = self.model
        act = _apply(model.action_in_proj, x_t.float())
        if time_emb.dim() == 2:
            time_emb = time_emb[:, None].expand_as(act)
        fused = torch.cat([act, time_emb], dim=-1)  # action first, then time
        act = _apply(model.action_time_mlp_out, F.silu(_apply(model.action_time_mlp_in, fused)))
        suffix = torch.cat([ctx.state_token, act], 1).to(self.compute_dtype)
        horizon = self.config.action_horizon
        hidden, _ = stack_forward(self.config.expert, ctx.layers, suffix, ctx.cos,
                                  ctx.signed_sin, ctx.bias, scratch=ctx.scratch)
        return _apply(model.action_out_proj,
                      rms_norm(hidden[:, -horizon:], ctx.final_scale).float())

    def sample_actions(self, images: torch.Tensor, image_masks: torch.Tensor,
                       tokens: torch.Tensor, token_masks: torch.Tensor, state: torch.Tensor,
                       noise: torch.Tensor | None = None, num_steps: int = 10,
                       time_grid: Sequence[float] | None = None, *,
                       generator: torch.Generator | None = None,
                       prior: ChunkPrior | None = None) -> torch.Tensor:
        """
        Sample an action chunk; arguments and result as ``Pi0Model.sample_actions``.

        Raises:
            ValueError: On inconsistent shapes, a bad num_steps, time grid or prior.
        """
        grid, noise = self.model.sampling_inputs(state, noise, num_steps, time_grid,
                                                 generator=generator, prior=prior)
        with torch.no_grad():
            cache = self.run_prefix(*self.embed_prefix(images, image_masks, tokens, token_masks))
            guided = (prior is not None and not self.config.delay_conditioned
                      and prior.max_weight > 0 and bool(prior.weights.any()))
            if guided:  # autograd through the fused step: a context of normal tensors
                with torch.inference_mode(False):
                    cache = cache.detached()
                    ctx = self.prepare_denoise(cache, state.clone())
            else:
                ctx = self.prepare_denoise(cache, state)

            def step(_cache: PrefixCache, _state: torch.Tensor, x_t: torch.Tensor,
                     time: torch.Tensor) -> torch.Tensor:
                return self._step(ctx, x_t, self.time_embeddings(time))

            return euler_sample(step, self.config, cache, state, noise, grid, prior)

    def _layers(self, weights: StackWeights) -> tuple[LayerWeights, ...]:
        """Return the prepared layers or raise if the model's weights cannot be fused."""
        layers = weights.layers()
        if layers is None:
            raise RuntimeError(
                'Pi0Engine cannot fuse the model weights (meta tensors or mixed dtypes/devices); '
                'materialise the model on one device with one storage dtype first.')
        return layers


def _apply(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply a float32 head linear without the module-call overhead (same kernel)."""
    return F.linear(x, layer.weight, layer.bias)
