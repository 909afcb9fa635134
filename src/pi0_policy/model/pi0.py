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

Compute dtype: the matmuls run in ``Pi0Model.compute_dtype`` (by default the storage dtype;
``set_compute_dtype(torch.float32)`` keeps bfloat16 weights and computes in float32). Choosing it
per device, and everything else that makes inference fast, is ``pi0_policy.engine``'s business;
this module is the reference forward path, differentiable end to end (training, RTC guidance).

Sampling may be guided by real-time chunking (``pi0_policy.model.rtc``): soft-masked inpainting
of the previous chunk's leftover (inference-time RTC) or hard inpainting of the first d actions
for checkpoints trained with delay conditioning (training-time RTC).

Flow-time helpers: ``pi0_policy.model.flow``; random initialisation: ``pi0_policy.model.init``.

Shape letters: B batch, C cameras, P tokens per camera, L prompt tokens, H horizon, A action dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

from pi0_policy.model.config import Pi0Config
from pi0_policy.model.flow import as_time, lerobot_time_grid, sample_time, time_embedding
# Re-exports (moved in the module split; ``from pi0_policy.model.pi0 import ...`` keeps working).
from pi0_policy.model.flow import openpi_time_grid, TIME_GRID_RULES  # noqa: F401
from pi0_policy.model.gemma import GemmaStack, joint_forward, KVCache, prefix_lm_allowed, RMSNorm
from pi0_policy.model.init import _fill_tiled, init_random, TILED_INIT_BUFFER  # noqa: F401
from pi0_policy.model.layers import Linear
from pi0_policy.model.rtc import ChunkPrior, guided_velocity, inpaint, inpainted_times
from pi0_policy.model.siglip import LayerNorm32, SiglipEmbeddings, SiglipVisionTower
import torch
from torch import nn
import torch.nn.functional as F

# Names of the π0 head linears (kept float32).
HEAD_LINEARS = ('state_proj', 'action_in_proj', 'action_time_mlp_in', 'action_time_mlp_out',
                'action_out_proj')
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class PrefixCache:
    """Per-observation state reused by every denoising step (read-only)."""

    # Per layer (k, v), each (B, K, S, E), post-RoPE.
    kv: KVCache
    # (B, S) bool validity of the prefix tokens.
    valid: torch.Tensor

    def detached(self) -> PrefixCache:
        """Return a copy usable as a constant inside autograd (no inference tensors)."""
        with torch.inference_mode(False), torch.no_grad():
            kv = tuple((k.clone(), v.clone()) for k, v in self.kv)
            return PrefixCache(kv=kv, valid=self.valid.clone())


def suffix_ar(horizon: int, device: torch.device) -> torch.Tensor:
    """Return the (1 + H,) ar markers of the suffix: 1 state, 1 first action, then 0."""
    ar = torch.zeros(1 + horizon, dtype=torch.int64, device=device)
    ar[:2] = 1
    return ar


def suffix_allowed(valid: torch.Tensor, horizon: int) -> torch.Tensor:
    """
    Return the (B, 1 + H, S + 1 + H) attention mask of the suffix against a prefix cache.

    Args:
        valid: (B, S) bool validity of the cached prefix tokens.
        horizon: H.

    Returns:
        (B, 1 + H, S + 1 + H) bool.
    """
    b, s = valid.shape
    t_s = 1 + horizon
    ones = torch.ones(b, t_s, dtype=torch.bool, device=valid.device)
    return torch.cat([valid[:, None, :].expand(b, t_s, s),
                      prefix_lm_allowed(suffix_ar(horizon, valid.device), ones)], dim=2)


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
        # None: compute in the storage dtype (see ``set_compute_dtype``).
        self._compute_dtype: torch.dtype | None = None

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
        return self

    def set_compute_dtype(self, dtype: torch.dtype | None) -> Pi0Model:
        """
        Choose the dtype the matmuls run in (None: the storage dtype).

        Args:
            dtype: torch.float32, torch.bfloat16 or None.

        Returns:
            self.

        Raises:
            ValueError: If the dtype is not supported.
        """
        if dtype is not None:
            check_dtype(dtype)
        self._compute_dtype = dtype
        return self

    @property
    def storage_dtype(self) -> torch.dtype:
        """Return the storage dtype of the transformer weights."""
        return self.vlm.layers[0].self_attn.q_proj.weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """Return the dtype of the transformer activations and matmuls."""
        return self.storage_dtype if self._compute_dtype is None else self._compute_dtype

    # ------------------------------------------------------------------------------- embeddings
    def embed_images(self, images: torch.Tensor, image_masks: torch.Tensor | None = None, *,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
        """
        Encode camera images with SigLIP and the projector (no scaling).

        Args:
            images: (B, C, 3, H, W) in [-1, 1].
            image_masks: Optional (B, C) bool; masked images are not encoded (their tokens are
                zeros, which is exact because masked tokens are never attended to).
            dtype: Compute dtype (default ``compute_dtype``).

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
        dtype = self.compute_dtype if dtype is None else dtype
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
                     tokens: torch.Tensor, token_masks: torch.Tensor, *,
                     dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Build the prefix: image tokens of every camera, then the scaled prompt embeddings.

        Args:
            images: (B, C, 3, H, W) in [-1, 1].
            image_masks: (B, C) bool.
            tokens: (B, L) int token ids.
            token_masks: (B, L) bool.
            dtype: Compute dtype (default ``compute_dtype``).

        Returns:
            (B, C*P + L, D_vlm) embeddings and their (B, C*P + L) bool validity.
        """
        self._check_prefix(images, image_masks, tokens, token_masks)
        b, c = images.shape[:2]
        p = self.config.tokens_per_camera
        img = self.embed_images(images, image_masks, dtype=dtype).reshape(b, c * p, -1)
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
            time: (B,) flow times, or (B, H) per action (training-time RTC).

        Returns:
            (B, 1 + H, D_expert) in the compute dtype.
        """
        state_tok = self.state_proj(state.float())[:, None]
        act = self.action_in_proj(x_t.float())
        temb = time_embedding(time.reshape(-1), self.config.expert.width)
        temb = temb.view(*time.shape, -1)
        if time.dim() == 1:
            temb = temb[:, None].expand_as(act)
        fused = torch.cat([act, temb], dim=-1)  # action first, then time
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
        emb, valid = self.embed_prefix(images, image_masks, tokens, token_masks)
        positions = torch.cumsum(valid.to(torch.int64), 1) - 1
        emb, valid, positions = drop_invalid_tokens(emb, valid, positions)
        # All prefix tokens attend to each other (ar = 0); only validity restricts them.
        allowed = prefix_lm_allowed(torch.zeros_like(positions), valid)
        _, kv = joint_forward([self.vlm, self.expert], [emb, None], positions, allowed,
                              build_cache=True, need_output=[False, False])
        return PrefixCache(kv=kv, valid=valid)

    def denoise_step(self, cache: PrefixCache, state: torch.Tensor, x_t: torch.Tensor,
                     time: torch.Tensor) -> torch.Tensor:
        """
        Predict the velocity at (x_t, t) with the action expert against the prefix cache.

        Differentiable in ``x_t`` (the cache is a constant).

        Args:
            cache: From ``build_prefix_cache`` (not modified).
            state: (B, state_dim).
            x_t: (B, H, A).
            time: (B,) flow times, or (B, H) per action.

        Returns:
            (B, H, A) float32 velocity.
        """
        horizon = self.config.action_horizon
        suffix = self.embed_suffix(state, x_t, time)
        n_valid = cache.valid.sum(1, dtype=torch.int64)  # (B,)
        positions = n_valid[:, None] + torch.arange(1 + horizon, device=suffix.device)[None]
        outs, _ = joint_forward([self.vlm, self.expert], [None, suffix], positions,
                                suffix_allowed(cache.valid, horizon), cache=cache.kv)
        return self.action_out_proj(outs[1][:, -horizon:].float())

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
        self._check_suffix(state, x_t, images.shape[0])
        cache = self.build_prefix_cache(images, image_masks, tokens, token_masks)
        return self.denoise_step(cache, state, x_t, as_time(time, x_t))

    def sample_actions(self, images: torch.Tensor, image_masks: torch.Tensor,
                       tokens: torch.Tensor, token_masks: torch.Tensor, state: torch.Tensor,
                       noise: torch.Tensor | None = None, num_steps: int = 10,
                       time_grid: Sequence[float] | None = None, *,
                       generator: torch.Generator | None = None,
                       prior: ChunkPrior | None = None) -> torch.Tensor:
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
            prior: Real-time chunking: the previous chunk's leftover. Guides every step
                (``rtc.guided_velocity``), or, for a checkpoint trained with delay conditioning
                (``config.delay_conditioned``), hard-inpaints its first d actions.

        Returns:
            (B, H, A) float32 actions.

        Raises:
            ValueError: On inconsistent shapes, a bad num_steps or time grid.
        """
        grid, noise = self.sampling_inputs(state, noise, num_steps, time_grid,
                                           generator=generator, prior=prior)
        with torch.no_grad():
            cache = self.build_prefix_cache(images, image_masks, tokens, token_masks)
            return euler_sample(self.denoise_step, self.config, cache, state, noise, grid, prior)

    def sampling_inputs(self, state: torch.Tensor, noise: torch.Tensor | None, num_steps: int,
                        time_grid: Sequence[float] | None, *,
                        generator: torch.Generator | None = None,
                        prior: ChunkPrior | None = None) -> tuple[list[float], torch.Tensor]:
        """
        Check the sampling arguments; return the time grid and the float32 (B, H, A) noise.

        Raises:
            ValueError: On inconsistent shapes, a bad num_steps, time grid or prior.
        """
        grid = check_time_grid(num_steps, time_grid)
        b = state.shape[0]
        shape = (b, self.config.action_horizon, self.config.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32,
                                device=state.device)
        self._check_suffix(state, noise, b)
        check_prior(prior, shape)
        return grid, noise.float()

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
            time: (B,) flow times, or (B, H) per action (training-time RTC); drawn from
                Beta(1.5, 1) * 0.999 + 0.001 if None.
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
        t = time.reshape(b, -1, 1)  # (B, 1 or H, 1)
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


def check_time_grid(num_steps: int, time_grid: Sequence[float] | None) -> list[float]:
    """
    Return the sampling times (default: ``lerobot_time_grid``), checked against num_steps.

    Raises:
        ValueError: On a non-positive num_steps or a grid of another length.
    """
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(f'num_steps must be a positive integer, got {num_steps!r}.')
    grid = lerobot_time_grid(num_steps) if time_grid is None else [float(t) for t in time_grid]
    if len(grid) != num_steps:
        raise ValueError(
            f'time_grid has {len(grid)} entries but num_steps={num_steps}; pass '
            f'num_steps=len(time_grid).')
    return grid


def check_prior(prior: ChunkPrior | None, shape: tuple[int, int, int]) -> None:
    """Raise ValueError unless the prior's target is (B, H, A) = ``shape`` (or B = 1)."""
    if prior is None:
        return
    got = tuple(prior.target.shape)
    if got[1:] != shape[1:] or got[0] not in (1, shape[0]):
        raise ValueError(
            f'RTC prior target must be (B, H, A) = {shape} in model space (normalised, padded '
            f'to the action width), got {got}.')


def euler_sample(step: Callable[..., torch.Tensor], config: Pi0Config, cache: PrefixCache,
                 state: torch.Tensor, noise: torch.Tensor, grid: Sequence[float],
                 prior: ChunkPrior | None = None) -> torch.Tensor:
    """
    Integrate ``x <- x + dt * v`` from t = 1 with a denoiser, optionally guided by RTC.

    Args:
        step: ``step(cache, state, x_t, time) -> velocity`` with time (B,) or (B, H); must be
            differentiable in x_t when ``prior`` guides (inference-time RTC).
        config: The model config (horizon, ``delay_conditioned``).
        cache: The prefix cache passed to ``step``.
        state: (B, state_dim).
        noise: (B, H, A) float32 sample at t = 1.
        grid: Flow times of the steps; ``dt = -1/len(grid)``.
        prior: None (plain sampling) or the previous chunk's leftover.

    Returns:
        (B, H, A) float32.
    """
    b = noise.shape[0]
    dt = -1.0 / len(grid)
    x = noise
    guided = (prior is not None and not config.delay_conditioned
              and prior.max_weight > 0 and bool(prior.weights.any()))
    if guided:  # constants of the vector-Jacobian product (no inference tensors)
        cache = cache.detached()
        with torch.inference_mode(False):
            state = state.clone()
    for t in grid:
        if prior is not None and config.delay_conditioned:
            x = inpaint(x, prior)
            times = inpainted_times(t, b, config.action_horizon, prior.delay, x.device)
            v = step(cache, state, x, times)
        elif guided:
            times = torch.full((b,), t, dtype=torch.float32, device=x.device)
            v = guided_velocity(lambda xt: step(cache, state, xt, times), x, t, prior)
        else:
            v = step(cache, state, x, torch.full((b,), t, dtype=torch.float32, device=x.device))
        x = x + dt * v
    if prior is not None and config.delay_conditioned:
        x = inpaint(x, prior)
    return x


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
    return model.to_empty(device=device).eval().requires_grad_(False)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return the module owning parameter ``name`` and the attribute name."""
    path, _, attr = name.rpartition('.')
    return (model.get_submodule(path) if path else model), attr
