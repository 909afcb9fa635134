"""
The π0 flow-matching policy network: embeddings, prefix KV cache, Euler sampling, training loss.

Conventions (spec §2-§4): t = 1 is noise and t = 0 data; ``x_t = t*noise + (1-t)*actions``; the
network predicts ``u = noise - actions``; sampling integrates ``x <- x + dt*v`` from t = 1 with
``dt = -1/num_steps``. The prefix (images, prompt) is run once per observation through the VLM
expert and its per-layer K/V are cached; every denoising step runs only the action expert over the
suffix (state token + H action tokens) against that cache, which is never modified.

dtype policy (``Pi0Model.set_dtype``): in bfloat16 mode every matmul weight is stored bfloat16
except the parameters listed by ``float32_param_names``, which stay float32: all norm weights
(Gemma RMSNorm, SigLIP LayerNorm; their math is float32 too), the SigLIP patch convolution and
positional embedding, and the five π0 head linears (state_proj, action_in_proj,
action_time_mlp_in/out, action_out_proj). So the time embedding, the action/time MLP, the output
velocity and the Euler integration are float32; RoPE rotation is float32 (cast back); attention
softmax accumulates in float32 inside scaled_dot_product_attention.

Compute policy (``Pi0Model.compute_policy``, see ``pi0_policy.model.compute``): bfloat16 storage
computes in bfloat16 on CUDA and on CPUs with native bfloat16 (AMX-BF16, AVX512-BF16, aarch64
BF16), and in float32 on other CPUs (policy 'auto'), where emulated bfloat16 matmuls are several
times slower than float32; the weights then stay resident in bfloat16 and are upcast per matmul.

Inference fast path (no autograd): per observation the prefix K/V cache, the suffix RoPE tables,
attention mask, state token and all flow-time embeddings are computed once
(``prepare_denoise``); each denoising step then runs only the action-time MLP and the action
expert with fused q/k/v and gate/up matmuls. In float32 it is bit-identical to the autograd path
(up to the MLP token blocking of long prefixes, see ``gemma.MLP_BLOCK_ELEMENTS``).

Shape letters: B batch, C cameras, P tokens per camera, L prompt tokens, H horizon, A action dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math

from pi0_policy.model.compute import check_policy, Linear, POLICY_AUTO, resolve_compute_dtype
from pi0_policy.model.config import Pi0Config, TIME_MAX_PERIOD, TIME_MIN_PERIOD
from pi0_policy.model.gemma import _folded_bias, GemmaStack, joint_forward, KVCache
from pi0_policy.model.gemma import kv_scratch, LayerWeights, prefix_lm_allowed, prepare_layers
from pi0_policy.model.gemma import rms_norm, RMSNorm, rope_tables, stack_forward
from pi0_policy.model.siglip import LayerNorm32, SiglipEmbeddings, SiglipVisionTower
import torch
from torch import nn
import torch.nn.functional as F

# Training-time distribution of t: Beta(alpha, beta) * scale + offset.
TIME_BETA_ALPHA = 1.5
TIME_BETA_BETA = 1.0
TIME_SCALE = 0.999
TIME_OFFSET = 0.001
# Names of the π0 head linears (kept float32).
HEAD_LINEARS = ('state_proj', 'action_in_proj', 'action_time_mlp_in', 'action_time_mlp_out',
                'action_out_proj')
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
# Benchmark-only initialisation (``init_random(tiled=True)``): length of the one random normal
# buffer that is tiled over every matrix (a prime, so tiles do not line up with rows).
TILED_INIT_BUFFER = 1_048_573


def lerobot_time_grid(num_steps: int) -> list[float]:
    """Return ``t_k = float32(1 + k*dt)``, dt = -1/num_steps in double (lerobot 0.6.1)."""
    dt = -1.0 / num_steps
    return [torch.tensor(1.0 + k * dt, dtype=torch.float32).item() for k in range(num_steps)]


def openpi_time_grid(num_steps: int) -> list[float]:
    """Return openpi's grid: t starts at 1 and accumulates ``t += dt`` in float32."""
    t = torch.tensor(1.0, dtype=torch.float32)
    grid = []
    for _ in range(num_steps):
        grid.append(t.item())
        t = t + (-1.0 / num_steps)
    return grid


TIME_GRID_RULES = {'lerobot': lerobot_time_grid, 'openpi': openpi_time_grid}


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """
    Embed flow time as [sin | cos] of ``t*2π/period`` (computed in float64, returned float32).

    Args:
        t: (B,) flow times.
        dim: Embedding width (even).

    Returns:
        (B, dim) float32.
    """
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = TIME_MIN_PERIOD * (TIME_MAX_PERIOD / TIME_MIN_PERIOD) ** fraction
    scaling = 1.0 / period * 2 * math.pi
    arg = scaling[None, :] * t.to(torch.float64)[:, None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(torch.float32)


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


class Pi0Model(nn.Module):
    """π0: SigLIP + projector, Gemma VLM and action expert with joint attention, head linears."""

    def __init__(self, config: Pi0Config) -> None:
        """Create all modules (uninitialised values; use ``init_random`` or a checkpoint)."""
        super().__init__()
        self.config = config
        ex = config.expert.width
        self.vision = SiglipVisionTower(config.vision)
        self.projector = Linear(config.vision.width, config.vlm.width)
        self.vlm = GemmaStack(config.vlm)
        self.expert = GemmaStack(config.expert)
        self.state_proj = Linear(config.state_dim, ex)
        self.action_in_proj = Linear(config.action_dim, ex)
        self.action_time_mlp_in = Linear(2 * ex, ex)
        self.action_time_mlp_out = Linear(ex, ex)
        self.action_out_proj = Linear(ex, config.action_dim)
        self.compute_policy = POLICY_AUTO
        self._compiled_step = None

    # ----------------------------------------------------------------------------- dtype policy
    def float32_param_names(self) -> set[str]:
        """Return the names of the parameters that stay float32 in every dtype mode."""
        keep = set()
        for mod_name, module in self.named_modules():
            if isinstance(module, (RMSNorm, LayerNorm32, SiglipEmbeddings)) or \
                    mod_name in HEAD_LINEARS:
                keep.update(f'{mod_name}.{p}' for p, _ in module.named_parameters())
        return keep

    def param_dtype(self, name: str, dtype: torch.dtype) -> torch.dtype:
        """Return the storage dtype of parameter ``name`` when the model runs in ``dtype``."""
        return torch.float32 if name in self.float32_param_names() else dtype

    def set_dtype(self, dtype: torch.dtype) -> Pi0Model:
        """
        Cast the parameters to ``dtype`` following the dtype policy (see the module docstring).

        Args:
            dtype: torch.float32 or torch.bfloat16.

        Returns:
            self.

        Raises:
            ValueError: If the dtype is not supported.
        """
        check_dtype(dtype)
        keep = self.float32_param_names()
        for name, param in list(self.named_parameters()):
            target = torch.float32 if name in keep else dtype
            if param.dtype != target:
                owner, attr = _owner(self, name)
                owner._parameters[attr] = nn.Parameter(param.detach().to(target),
                                                       requires_grad=param.requires_grad)
        self.fuse_weights()
        return self

    def set_compute_policy(self, policy: str) -> Pi0Model:
        """
        Choose the compute dtype rule for bfloat16 storage (see ``pi0_policy.model.compute``).

        Args:
            policy: 'auto' (float32 on CPUs without native bfloat16), 'storage' or 'float32'.

        Returns:
            self.

        Raises:
            ValueError: On an unknown policy.
        """
        check_policy(policy)
        self.compute_policy = policy
        return self

    @property
    def storage_dtype(self) -> torch.dtype:
        """Return the storage dtype of the transformer weights."""
        return self.vlm.layers[0].self_attn.q_proj.weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """Return the dtype of the transformer activations and matmuls (compute policy)."""
        weight = self.vlm.layers[0].self_attn.q_proj.weight
        return resolve_compute_dtype(weight.dtype, weight.device, self.compute_policy)

    def fuse_weights(self, copy: bool = True) -> bool:
        """
        Store every q/k/v and gate/up group as one tensor (parameters become views of it).

        Idempotent and cheap when already fused; called by ``build_empty``, ``set_dtype`` and
        the loaders, and re-done automatically by inference after ``Module.to`` and the like.

        Args:
            copy: Keep the current values (False: only allocate, for uninitialised models).

        Returns:
            Whether every group could be fused (False on the meta device).
        """
        return all([self.vision.fuse_weights(copy), self.vlm.fuse_weights(copy),
                    self.expert.fuse_weights(copy)])

    # ------------------------------------------------------------------------------- embeddings
    def embed_images(self, images: torch.Tensor,
                     image_masks: torch.Tensor | None = None) -> torch.Tensor:
        """
        Encode camera images with SigLIP and the projector (no scaling).

        Args:
            images: (B, C, 3, H, W) in [-1, 1].
            image_masks: Optional (B, C) bool; masked images are not encoded (their tokens are
                zeros, which is exact because masked tokens are never attended to).

        Returns:
            (B, C, P, D_vlm) image tokens in the compute dtype.
        """
        size = self.config.vision.image_size
        if images.dim() != 5 or tuple(images.shape[2:]) != (3, size, size):
            raise ValueError(
                f'images must have shape (B, C, 3, {size}, {size}), got {tuple(images.shape)}; '
                'resize with padding to the model image size first.')
        b, c = images.shape[:2]
        flat = images.reshape(b * c, 3, size, size)
        dtype = self.compute_dtype
        if image_masks is None or bool(image_masks.all()):
            tokens = self.projector(self.vision(flat, dtype))
        else:
            index = image_masks.reshape(-1).nonzero().squeeze(1)
            tokens = torch.zeros(b * c, self.config.tokens_per_camera, self.config.vlm.width,
                                 dtype=dtype, device=images.device)
            if index.numel():
                tokens[index] = self.projector(self.vision(flat[index], dtype))
        return tokens.reshape(b, c, self.config.tokens_per_camera, self.config.vlm.width)

    def embed_prefix(self, images: torch.Tensor, image_masks: torch.Tensor,
                     tokens: torch.Tensor,
                     token_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Build the prefix: image tokens of every camera, then the scaled prompt embeddings.

        Args:
            images: (B, C, 3, H, W) in [-1, 1].
            image_masks: (B, C) bool.
            tokens: (B, L) int token ids.
            token_masks: (B, L) bool.

        Returns:
            (B, C*P + L, D_vlm) embeddings and their (B, C*P + L) bool validity.
        """
        self._check_prefix(images, image_masks, tokens, token_masks)
        b, c = images.shape[:2]
        p = self.config.tokens_per_camera
        img = self.embed_images(images, image_masks).reshape(b, c * p, -1)
        img_valid = image_masks.bool()[:, :, None].expand(b, c, p).reshape(b, c * p)
        lang = self.vlm.embed(tokens).to(img.dtype)
        return torch.cat([img, lang], 1), torch.cat([img_valid, token_masks.bool()], 1)

    def embed_suffix(self, state: torch.Tensor, x_t: torch.Tensor,
                     time: torch.Tensor) -> torch.Tensor:
        """
        Build the suffix: the state token then H fused action/time tokens (float32 head).

        Args:
            state: (B, state_dim).
            x_t: (B, H, A) noisy actions.
            time: (B,) flow times.

        Returns:
            (B, 1 + H, D_expert) in the compute dtype.
        """
        state_tok = self.state_proj(state.float())[:, None]
        temb = time_embedding(time, self.config.expert.width)
        act = self.action_in_proj(x_t.float())
        fused = torch.cat([act, temb[:, None].expand_as(act)], dim=-1)
        act = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
        return torch.cat([state_tok, act], 1).to(self.compute_dtype)

    def _suffix_ar(self, device: torch.device) -> torch.Tensor:
        """Return the (1 + H,) ar markers of the suffix: 1 state, 1 first action, then 0."""
        ar = torch.zeros(1 + self.config.action_horizon, dtype=torch.int64, device=device)
        ar[:2] = 1
        return ar

    # ------------------------------------------------------------------------- cache + sampling
    def build_prefix_cache(self, images: torch.Tensor, image_masks: torch.Tensor,
                           tokens: torch.Tensor, token_masks: torch.Tensor) -> PrefixCache:
        """
        Run the VLM once over the prefix and keep every layer's K/V.

        Args:
            images: (B, C, 3, H, W) in [-1, 1].
            image_masks: (B, C) bool.
            tokens: (B, L) int.
            token_masks: (B, L) bool.

        Returns:
            The read-only cache for ``denoise_step``.
        """
        return self.run_prefix(*self.embed_prefix(images, image_masks, tokens, token_masks))

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
        emb, valid, positions = _drop_invalid_tokens(emb, valid, positions)
        # All prefix tokens attend to each other (ar = 0); only validity restricts them.
        allowed = None if bool(valid.all()) else prefix_lm_allowed(
            torch.zeros_like(positions), valid)
        layers = None if torch.is_grad_enabled() else prepare_layers(self.vlm)
        if layers is None:
            _, kv = joint_forward([self.vlm, self.expert], [emb, None], positions, allowed,
                                  build_cache=True, need_output=[False, False])
        else:
            cfg = self.config.vlm
            cos, signed_sin = rope_tables(positions, cfg.head_dim)
            bias = _folded_bias(allowed, cfg.num_heads // cfg.num_kv_heads, emb.dtype)
            _, kv = stack_forward(cfg, layers, emb, cos, signed_sin, bias, build_cache=True,
                                  need_output=False)
        return PrefixCache(kv=kv, valid=valid)

    def prepare_denoise(self, cache: PrefixCache, state: torch.Tensor) -> DenoiseContext:
        """
        Compute once per observation what every denoising step shares.

        Args:
            cache: From ``build_prefix_cache`` (not modified).
            state: (B, state_dim).

        Returns:
            The context for ``denoise``.
        """
        cfg = self.config.expert
        b = state.shape[0]
        t_s = 1 + self.config.action_horizon
        device = state.device
        n_valid = cache.valid.sum(1, dtype=torch.int64)  # (B,)
        positions = n_valid[:, None] + torch.arange(t_s, device=device)[None]
        suffix_valid = torch.ones(b, t_s, dtype=torch.bool, device=device)
        allowed = torch.cat([cache.valid[:, None, :].expand(b, t_s, cache.valid.shape[1]),
                             prefix_lm_allowed(self._suffix_ar(device), suffix_valid)], dim=2)
        cos, signed_sin = rope_tables(positions, cfg.head_dim)
        layers = None if torch.is_grad_enabled() else prepare_layers(self.expert)
        scratch = None if layers is None else kv_scratch(cache.kv, t_s)
        return DenoiseContext(
            cache=cache, state_token=self.state_proj(state.float())[:, None],
            positions=positions, allowed=allowed, cos=cos, signed_sin=signed_sin,
            bias=_folded_bias(allowed, cfg.num_heads // cfg.num_kv_heads, self.compute_dtype),
            layers=layers, final_scale=self.expert.norm.scale(), scratch=scratch)

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
            time_emb: (B, D_expert) float32 from ``time_embeddings``.

        Returns:
            (B, H, A) float32 velocity.
        """
        act = _apply(self.action_in_proj, x_t.float())
        fused = torch.cat([act, time_emb[:, None].expand_as(act)], dim=-1)
        act = _apply(self.action_time_mlp_out, F.silu(_apply(self.action_time_mlp_in, fused)))
        suffix = torch.cat([ctx.state_token, act], 1).to(self.compute_dtype)
        horizon = self.config.action_horizon
        if ctx.layers is None:
            outs, _ = joint_forward([self.vlm, self.expert], [None, suffix], ctx.positions,
                                    ctx.allowed, cache=ctx.cache.kv)
            return self.action_out_proj(outs[1][:, -horizon:].float())
        hidden, _ = stack_forward(self.config.expert, ctx.layers, suffix, ctx.cos,
                                  ctx.signed_sin, ctx.bias, scratch=ctx.scratch)
        return _apply(self.action_out_proj,
                      rms_norm(hidden[:, -horizon:], ctx.final_scale).float())

    def denoise_step(self, cache: PrefixCache, state: torch.Tensor, x_t: torch.Tensor,
                     time: torch.Tensor) -> torch.Tensor:
        """
        Predict the velocity at (x_t, t) with the action expert against the prefix cache.

        Convenience for one step; ``sample_actions`` prepares the context once instead.

        Args:
            cache: From ``build_prefix_cache`` (not modified).
            state: (B, state_dim).
            x_t: (B, H, A).
            time: (B,) flow times.

        Returns:
            (B, H, A) float32 velocity.
        """
        ctx = self.prepare_denoise(cache, state)
        return self.denoise(ctx, x_t, self.time_embeddings(time))

    def velocity(self, images: torch.Tensor, image_masks: torch.Tensor, tokens: torch.Tensor,
                 token_masks: torch.Tensor, state: torch.Tensor, x_t: torch.Tensor,
                 time: torch.Tensor) -> torch.Tensor:
        """
        Predict the velocity ``v(x_t, t)`` for one observation (builds the prefix cache).

        Args:
            images: (B, C, 3, H, W); image_masks: (B, C) bool; tokens, token_masks: (B, L).
            state: (B, state_dim); x_t: (B, H, A); time: (B,).

        Returns:
            (B, H, A) float32.
        """
        with torch.inference_mode():
            self._check_suffix(state, x_t, images.shape[0])
            cache = self.build_prefix_cache(images, image_masks, tokens, token_masks)
            return self.denoise_step(cache, state, x_t, _as_time(time, x_t))

    def sample_actions(self, images: torch.Tensor, image_masks: torch.Tensor,
                       tokens: torch.Tensor, token_masks: torch.Tensor, state: torch.Tensor,
                       noise: torch.Tensor | None = None, num_steps: int = 10,
                       time_grid: Sequence[float] | None = None, *,
                       generator: torch.Generator | None = None,
                       compile: bool = False,  # noqa: A002
                       ) -> torch.Tensor:
        """
        Sample an action chunk by Euler integration from t = 1 (noise) to t = 0.

        Args:
            images: (B, C, 3, H, W) in [-1, 1].
            image_masks: (B, C) bool, False = camera absent for that sample.
            tokens: (B, L) int prompt ids.
            token_masks: (B, L) bool.
            state: (B, state_dim) normalised, padded state.
            noise: (B, H, A) initial sample at t = 1; drawn N(0, 1) if None.
            num_steps: Number of velocity evaluations; ``dt = -1/num_steps``.
            time_grid: Times t_k of the evaluations (length num_steps); default
                ``lerobot_time_grid(num_steps)``. Every step uses the same dt.
            generator: RNG for the noise.
            compile: Run the denoising step through ``torch.compile`` (compiled once per model).

        Returns:
            (B, H, A) float32 actions.

        Raises:
            ValueError: On inconsistent shapes, a bad num_steps or time grid.
        """
        if not isinstance(num_steps, int) or num_steps <= 0:
            raise ValueError(f'num_steps must be a positive integer, got {num_steps!r}.')
        if time_grid is None:
            grid = lerobot_time_grid(num_steps)
        else:
            grid = [float(t) for t in time_grid]
        if len(grid) != num_steps:
            raise ValueError(
                f'time_grid has {len(grid)} entries but num_steps={num_steps}; pass '
                f'num_steps=len(time_grid).')
        b = images.shape[0]
        shape = (b, self.config.action_horizon, self.config.action_dim)
        with torch.inference_mode():
            if noise is None:
                noise = torch.randn(shape, generator=generator, dtype=torch.float32,
                                    device=images.device)
            self._check_suffix(state, noise, b)
            step = self._step_fn(compile)
            cache = self.build_prefix_cache(images, image_masks, tokens, token_masks)
            ctx = self.prepare_denoise(cache, state)
            times = torch.tensor(grid, dtype=torch.float32, device=noise.device)
            time_emb = self.time_embeddings(times[:, None].expand(num_steps, b))  # (K, B, D)
            dt = -1.0 / num_steps
            x = noise.float()
            for k in range(num_steps):
                x = x + dt * step(ctx, x, time_emb[k])
            return x

    def compute_loss(self, images: torch.Tensor, image_masks: torch.Tensor,
                     tokens: torch.Tensor, token_masks: torch.Tensor, state: torch.Tensor,
                     actions: torch.Tensor, noise: torch.Tensor | None = None,
                     time: torch.Tensor | None = None, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """
        Compute the per-element flow-matching loss ``(v(x_t, t) - (noise - actions))^2``.

        One joint pass over prefix + suffix (no cache), differentiable.

        Args:
            images, image_masks, tokens, token_masks, state: As in ``sample_actions``.
            actions: (B, H, A) normalised, padded target chunk.
            noise: (B, H, A); drawn N(0, 1) if None.
            time: (B,) flow times; drawn from Beta(1.5, 1) * 0.999 + 0.001 if None.
            generator: RNG for noise and time.

        Returns:
            (B, H, A) float32 squared errors.
        """
        b = images.shape[0]
        self._check_suffix(state, actions, b)
        if noise is None:
            noise = torch.randn(actions.shape, generator=generator, dtype=torch.float32,
                                device=actions.device)
        if time is None:
            time = sample_time(b, generator=generator, device=actions.device)
        time = _as_time(time, actions)
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        target = noise - actions
        prefix, prefix_valid = self.embed_prefix(images, image_masks, tokens, token_masks)
        suffix = self.embed_suffix(state, x_t, time)
        valid = torch.cat([prefix_valid, torch.ones(suffix.shape[:2], dtype=torch.bool,
                                                    device=suffix.device)], 1)
        ar = torch.cat([torch.zeros(prefix.shape[1], dtype=torch.int64, device=valid.device),
                        self._suffix_ar(valid.device)])
        positions = torch.cumsum(valid.to(torch.int64), 1) - 1
        keep = torch.cat([prefix_valid.any(0), valid.new_ones(suffix.shape[1])])
        if not bool(keep.all()):
            prefix, _, _ = _drop_invalid_tokens(prefix, prefix_valid, positions)
            valid, positions, ar = valid[:, keep], positions[:, keep], ar[keep]
        outs, _ = joint_forward([self.vlm, self.expert], [prefix, suffix], positions,
                                prefix_lm_allowed(ar, valid), need_output=[False, True])
        v = self.action_out_proj(outs[1][:, -self.config.action_horizon:].float())
        return (v - target.float()) ** 2

    # ---------------------------------------------------------------------------------- helpers
    def _step_fn(self, use_compile: bool) -> Callable[..., torch.Tensor]:
        """Return the (optionally compiled) denoising step."""
        if not use_compile:
            return self.denoise
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self.denoise, dynamic=False)
        return self._compiled_step

    def _check_prefix(self, images: torch.Tensor, image_masks: torch.Tensor,
                      tokens: torch.Tensor, token_masks: torch.Tensor) -> None:
        """Raise ValueError on inconsistent prefix input shapes."""
        if images.dim() != 5:
            raise ValueError(f'images must be (B, C, 3, H, W), got {tuple(images.shape)}.')
        b, c = images.shape[:2]
        if tuple(image_masks.shape) != (b, c):
            raise ValueError(
                f'image_masks must be (B, C) = {(b, c)} to match images, got '
                f'{tuple(image_masks.shape)}.')
        if tokens.dim() != 2 or tokens.shape[0] != b or token_masks.shape != tokens.shape:
            raise ValueError(
                f'tokens and token_masks must both be (B, L) with B={b}, got '
                f'{tuple(tokens.shape)} and {tuple(token_masks.shape)}.')
        if tokens.dtype.is_floating_point:
            raise ValueError(f'tokens must be integer ids, got dtype {tokens.dtype}.')

    def _check_suffix(self, state: torch.Tensor, chunk: torch.Tensor, b: int) -> None:
        """Raise ValueError on inconsistent state / action-chunk shapes."""
        cfg = self.config
        if tuple(state.shape) != (b, cfg.state_dim):
            raise ValueError(
                f'state must be (B, state_dim) = {(b, cfg.state_dim)}, got {tuple(state.shape)}; '
                'pad the state to the model width.')
        want = (b, cfg.action_horizon, cfg.action_dim)
        if tuple(chunk.shape) != want:
            raise ValueError(
                f'noise/actions must be (B, H, A) = {want}, got {tuple(chunk.shape)}.')


def check_dtype(dtype: torch.dtype) -> None:
    """Raise ValueError unless ``dtype`` is float32 or bfloat16."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f'dtype must be one of {SUPPORTED_DTYPES}, got {dtype}.')


def sample_time(batch: int, *, generator: torch.Generator | None = None,
                device: torch.device | str = 'cpu') -> torch.Tensor:
    """
    Draw training flow times ``Beta(1.5, 1) * 0.999 + 0.001``.

    Beta(a, 1) is sampled by inversion, ``u ** (1 / a)``, so a torch.Generator can seed it.

    Args:
        batch: B.
        generator: Optional RNG.
        device: Target device.

    Returns:
        (B,) float32 in [0.001, 1].
    """
    assert TIME_BETA_BETA == 1.0, 'inversion sampling needs beta == 1'
    u = torch.rand(batch, generator=generator, dtype=torch.float32, device=device)
    return u ** (1.0 / TIME_BETA_ALPHA) * TIME_SCALE + TIME_OFFSET


def build_empty(config: Pi0Config, *, device: torch.device | str = 'cpu',
                dtype: torch.dtype = torch.float32) -> Pi0Model:
    """
    Build the module on the meta device, apply the dtype policy, then allocate (uninitialised).

    Args:
        config: Architecture.
        device: Target device.
        dtype: Compute dtype (float32 or bfloat16).

    Returns:
        A model whose parameters are allocated but hold arbitrary values.
    """
    check_dtype(dtype)
    with torch.device('meta'):
        model = Pi0Model(config)
    model.set_dtype(dtype)
    model = model.to_empty(device=device).eval().requires_grad_(False)
    model.fuse_weights(copy=False)
    return model


@torch.no_grad()
def init_random(model: Pi0Model, seed: int = 0, *, tiled: bool = False) -> Pi0Model:
    """
    Fill the parameters in place with random values (in their storage dtype, no copies).

    Matrices get N(0, 1/fan_in), biases and Gemma norm scales 0, LayerNorm weights 1.

    ``tiled=True`` is for benchmarks of big models only: one buffer of 2 * ``TILED_INIT_BUFFER``
    N(0, 1) draws is made, scaled by 1/sqrt(fan_in) and cast once per (storage dtype, fan_in),
    and every matrix is filled by copying that buffer from a seeded random offset, tile after
    tile. Same per-element distribution and still deterministic per seed, but the values repeat
    with period ``TILED_INIT_BUFFER``, so this is not an i.i.d. initialisation; it is many times
    faster (memory-bound copies instead of random number generation).

    Args:
        model: A materialised model (for example from ``build_empty``).
        seed: RNG seed.
        tiled: Use the fast periodic fill (benchmarks).

    Returns:
        The same model.
    """
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    layer_norms = {f'{n}.weight' for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    normal: torch.Tensor | None = None
    tiles: dict[tuple[torch.dtype, int], torch.Tensor] = {}
    for name, param in model.named_parameters():
        fan_in = math.prod(param.shape[1:])
        if name in layer_norms:
            param.fill_(1.0)
        elif param.dim() == 1:
            param.zero_()
        elif tiled:
            if normal is None:
                normal = torch.randn(2 * TILED_INIT_BUFFER, generator=gen, device=param.device)
            key = (param.dtype, fan_in)
            if key not in tiles:  # one pre-scaled buffer per (dtype, fan_in): fills are copies
                tiles[key] = (normal * fan_in ** -0.5).to(param.dtype)
            _fill_tiled(param, tiles[key], gen)
        else:
            param.normal_(0.0, fan_in ** -0.5, generator=gen)
    return model


def _fill_tiled(param: torch.Tensor, buffer: torch.Tensor, gen: torch.Generator) -> None:
    """Copy ``buffer[offset:offset + TILED_INIT_BUFFER]`` over ``param`` tile by tile."""
    flat = param.view(-1)
    offset = int(torch.randint(TILED_INIT_BUFFER, (1,), generator=gen,
                               device=gen.device).item())
    tile = buffer[offset:offset + TILED_INIT_BUFFER]
    for start in range(0, flat.numel(), TILED_INIT_BUFFER):
        part = flat[start:start + TILED_INIT_BUFFER]
        part.copy_(tile[:part.numel()])


def _drop_invalid_tokens(
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


def _apply(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply a float32 head linear without the module-call overhead (same kernel)."""
    return F.linear(x, layer.weight, layer.bias)


def _as_time(time: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Return flow times as a (B,) float32 tensor on the device of ``like``."""
    b = like.shape[0]
    time = torch.as_tensor(time, dtype=torch.float32, device=like.device)
    if time.dim() == 0:
        time = time.expand(b)
    if tuple(time.shape) != (b,):
        raise ValueError(f'time must be a scalar or (B,) = ({b},), got {tuple(time.shape)}.')
    return time


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return the module owning parameter ``name`` and the attribute name."""
    path, _, attr = name.rpartition('.')
    return (model.get_submodule(path) if path else model), attr
