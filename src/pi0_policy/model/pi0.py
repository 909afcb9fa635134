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

Inference fast path (prefix K/V cache, per-observation denoise context, fused step):
``pi0_policy.model.denoise``; flow-time helpers: ``pi0_policy.model.flow``; random
initialisation: ``pi0_policy.model.init``.

Shape letters: B batch, C cameras, P tokens per camera, L prompt tokens, H horizon, A action dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pi0_policy.model import denoise as fast
from pi0_policy.model.compute import check_policy, Linear, POLICY_AUTO, resolve_compute_dtype
from pi0_policy.model.config import Pi0Config
from pi0_policy.model.denoise import DenoiseContext, drop_invalid_tokens, PrefixCache, suffix_ar
from pi0_policy.model.flow import as_time, lerobot_time_grid, sample_time, time_embedding
# Re-exports (moved in the module split; ``from pi0_policy.model.pi0 import ...`` keeps working).
from pi0_policy.model.flow import openpi_time_grid, TIME_GRID_RULES  # noqa: F401
from pi0_policy.model.gemma import GemmaStack, joint_forward, prefix_lm_allowed, RMSNorm
from pi0_policy.model.init import _fill_tiled, init_random, TILED_INIT_BUFFER  # noqa: F401
from pi0_policy.model.siglip import LayerNorm32, SiglipEmbeddings, SiglipVisionTower
import torch
from torch import nn
import torch.nn.functional as F

# Names of the π0 head linears (kept float32).
HEAD_LINEARS = ('state_proj', 'action_in_proj', 'action_time_mlp_in', 'action_time_mlp_out',
                'action_out_proj')
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


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
        """Run the VLM over embedded prefix tokens (B, S, D_vlm), (B, S) and cache the K/V."""
        return fast.run_prefix(self, emb, valid)

    def prepare_denoise(self, cache: PrefixCache, state: torch.Tensor) -> DenoiseContext:
        """Compute once per observation what every denoising step shares (see ``denoise``)."""
        return fast.prepare_denoise(self, cache, state)

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
        """Predict the (B, H, A) float32 velocity at x_t (B, H, A), time_emb (B, D_expert)."""
        return fast.denoise(self, ctx, x_t, time_emb)

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
            return self.denoise_step(cache, state, x_t, as_time(time, x_t))

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
        time = as_time(time, actions)
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        target = noise - actions
        prefix, prefix_valid = self.embed_prefix(images, image_masks, tokens, token_masks)
        suffix = self.embed_suffix(state, x_t, time)
        valid = torch.cat([prefix_valid, torch.ones(suffix.shape[:2], dtype=torch.bool,
                                                    device=suffix.device)], 1)
        ar = torch.cat([torch.zeros(prefix.shape[1], dtype=torch.int64, device=valid.device),
                        suffix_ar(self.config.action_horizon, valid.device)])
        positions = torch.cumsum(valid.to(torch.int64), 1) - 1
        keep = torch.cat([prefix_valid.any(0), valid.new_ones(suffix.shape[1])])
        if not bool(keep.all()):
            prefix, _, _ = drop_invalid_tokens(prefix, prefix_valid, positions)
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


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return the module owning parameter ``name`` and the attribute name."""
    path, _, attr = name.rpartition('.')
    return (model.get_submodule(path) if path else model), attr
