"""
The engine's Gemma stack: one expert at a time, no autograd, fused weights, in-place K/V buffers.

Computes what ``pi0_policy.model.gemma.joint_forward`` computes for a single active expert (the
prefix pass of the VLM, the denoising steps of the action expert), with:

- fused q/k/v and gate/up matmuls (``compute.fuse_rows``) and precomputed ``1 + w`` norm scales;
- sign-folded RoPE tables, one rotation pass over queries and keys;
- per-observation K/V work buffers that each denoising step overwrites (no concatenation);
- the MLP over all tokens at once up to ``MLP_BLOCK_ELEMENTS`` gate/up outputs (so the MLP weights
  are read once per layer for any realistic prefix), in token blocks beyond.

Equal to the model within float32 rounding (``test/test_engine.py``).

Shape letters: B batch, T query tokens, S key tokens, D width, N query heads, K key/value heads,
G = N / K query heads per key/value head, E head_dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pi0_policy.engine.compute import fuse_rows, linear
from pi0_policy.model.config import GemmaConfig, ROPE_BASE
from pi0_policy.model.gemma import attend, GemmaStack, KVCache, rms_norm, rope_cos_sin
import torch
import torch.nn.functional as F

# Rows of the fused gate/up output whose length is a multiple of this go through the vectorised
# GELU without a per-row scalar tail (2 vectors of 16 floats per iteration with AVX-512).
GELU_ROW_ALIGN = 64
# Largest (tokens x 2 * mlp_dim) gate/up activation computed at once (128 MB of float32: a
# full-size three-camera prefix in one block).
MLP_BLOCK_ELEMENTS = 1 << 25


def rope_tables(positions: torch.Tensor, head_dim: int,
                base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Return the RoPE tables of ``apply_rope_fast``: cos and the sign-folded sin.

    Args:
        positions: (B, T) integer positions.
        head_dim: E.
        base: RoPE max wavelength.

    Returns:
        cos and ``[-sin_first_half | sin_second_half]``, each (B, T, 1, E) float32.
    """
    cos, sin = rope_cos_sin(positions, head_dim, base)
    half = head_dim // 2
    signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return cos[:, :, None], signed[:, :, None]


def apply_rope_fast(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """
    Rotate (B, T, H, E) like ``apply_rope`` (bit-identical) with tables from ``rope_tables``.

    ``-x2 * sin == x2 * (-sin)`` exactly, so the sign lives in the table and the rotation is one
    half swap, two products and a sum.

    Args:
        x: (B, T, H, E) queries and/or keys (may be a strided view).
        cos: (B, T, 1, E) float32.
        signed_sin: (B, T, 1, E) float32.

    Returns:
        (B, T, H, E) contiguous, in the dtype of ``x``.
    """
    xf = x.float()
    half = xf.shape[-1] // 2
    swapped = torch.cat([xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + swapped * signed_sin).to(x.dtype)


class LayerWeights(NamedTuple):
    """The tensors of one Gemma layer used by ``stack_forward``."""

    # (D,) float32 ``1 + w`` of the input RMSNorm.
    in_scale: torch.Tensor
    # ((N + 2K) * E, D) fused q/k/v projection.
    qkv: torch.Tensor
    # (D, N * E) output projection.
    o: torch.Tensor
    # (D,) float32 ``1 + w`` of the post-attention RMSNorm.
    post_scale: torch.Tensor
    # (2 * mlp_dim, D) fused gate/up projection.
    gate_up: torch.Tensor
    # (D, mlp_dim) down projection.
    down: torch.Tensor


class StackWeights:
    """
    The engine's prepared weights of one expert, kept in step with the model's parameters.

    ``layers()`` re-checks (pointer comparisons) that the fused tensors still back the model's
    parameters and rebuilds what changed, so replacing a parameter never leaves stale weights.
    """

    def __init__(self, stack: GemmaStack) -> None:
        """Bind to an expert of the model (fused lazily on the first ``layers()``)."""
        self._stack = stack
        n = len(stack.layers)
        self._qkv: list[torch.Tensor | None] = [None] * n
        self._gate_up: list[torch.Tensor | None] = [None] * n
        self._scales: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}

    def layers(self) -> tuple[LayerWeights, ...] | None:
        """
        Return every layer's inference tensors (fusing if needed).

        Returns:
            One ``LayerWeights`` per layer, or None if the weights cannot be fused (meta
            tensors, mixed dtypes).
        """
        out = []
        for i, layer in enumerate(self._stack.layers):
            attn, mlp = layer.self_attn, layer.mlp
            self._qkv[i] = fuse_rows((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight),
                                     self._qkv[i])
            self._gate_up[i] = fuse_rows((mlp.gate_proj.weight, mlp.up_proj.weight),
                                         self._gate_up[i])
            if self._qkv[i] is None or self._gate_up[i] is None:
                return None
            out.append(LayerWeights(self.scale(layer.input_layernorm.weight), self._qkv[i],
                                    attn.o_proj.weight,
                                    self.scale(layer.post_attention_layernorm.weight),
                                    self._gate_up[i], mlp.down_proj.weight))
        return tuple(out)

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        """Return the float32 ``1 + w`` of a norm weight (cached while it is unchanged)."""
        key = (weight.data_ptr(), weight._version)
        cached = self._scales.get(id(weight))
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                cached = (key, 1.0 + weight.detach().float())
            self._scales[id(weight)] = cached
        return cached[1]


def kv_scratch(cache: KVCache, extra: int) -> KVCache:
    """
    Return per-layer (k, v) buffers holding a copy of ``cache`` plus ``extra`` free positions.

    Args:
        cache: Per-layer (k, v), each (B, K, S, E); only read.
        extra: Number of positions to append (the suffix length T).

    Returns:
        Per-layer (k, v), each (B, K, S + extra, E), for ``stack_forward(scratch=...)``.
    """
    out = []
    for k, v in cache:
        bufs = []
        for x in (k, v):
            b, kh, s, e = x.shape
            buf = torch.empty(b, kh, s + extra, e, dtype=x.dtype, device=x.device)
            buf[:, :, :s].copy_(x)
            bufs.append(buf)
        out.append((bufs[0], bufs[1]))
    return tuple(out)


def _mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """
    Apply the GeGLU MLP with fused gate/up weights (token blocks only for very long inputs).

    Blocks of at most ``MLP_BLOCK_ELEMENTS`` gate/up outputs bound the transient memory of the
    (T, 2F) activations; every realistic prefix runs as one block.

    Args:
        x: (B, T, D) normed input.
        gate_up: (2F, D) fused gate/up weight.
        down: (D, F) down projection.

    Returns:
        (B, T, D).
    """
    b, t, d = x.shape
    f = gate_up.shape[0] // 2
    flat = x.reshape(b * t, d)
    block = max(1, MLP_BLOCK_ELEMENTS // (2 * f))
    if b * t <= block:
        return _mlp_rows(flat, gate_up, down, f).view(b, t, -1)
    out = torch.empty(b * t, down.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, b * t, block):
        out[start:start + block] = _mlp_rows(flat[start:start + block], gate_up, down, f)
    return out.view(b, t, -1)


def _mlp_rows(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, f: int) -> torch.Tensor:
    """Apply the MLP to (M, D) rows; see ``_mlp``."""
    both = _mm(x, gate_up)  # (M, 2F)
    gate = both[:, :f]
    if f % GELU_ROW_ALIGN:
        # Vectorised kernels finish each row of a strided view with a scalar tail whose tanh may
        # differ in the last bit; a contiguous gate keeps the results bit-identical.
        gate = gate.contiguous()
    hidden = F.gelu(gate, approximate='tanh')
    return _mm(hidden.mul_(both[:, f:]), down)


def _mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Return ``x @ weight.T`` for (M, D) ``x`` (upcasting a lower-precision weight)."""
    if x.dtype != weight.dtype:
        return linear(x, weight)
    return torch.mm(x, weight.t())


def _project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Return ``x @ weight.T`` for (B, T, D) ``x`` (F.linear's kernel, less dispatch overhead)."""
    if x.dtype != weight.dtype:
        return linear(x, weight)
    b, t, d = x.shape
    return torch.mm(x.reshape(b * t, d), weight.t()).view(b, t, -1)


def stack_forward(
    cfg: GemmaConfig,
    weights: Sequence[LayerWeights],
    x: torch.Tensor,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    cache: KVCache | None = None,
    scratch: KVCache | None = None,
    build_cache: bool = False,
    need_output: bool = True,
) -> tuple[torch.Tensor | None, KVCache | None]:
    """
    Run every layer of one expert (inference fast path, no autograd; no final norm).

    Args:
        cfg: The expert's config.
        weights: From ``StackWeights.layers``.
        x: (B, T, D) input embeddings in the compute dtype.
        cos: (B, T, 1, E) and signed_sin (B, T, 1, E) from ``rope_tables``.
        signed_sin: See ``cos``.
        bias: (B, 1, T*G, S) additive mask from ``gemma.folded_bias`` (S = cached length + T), or
            None where everything may be attended.
        cache: Read-only per-layer (k, v) prepended to the keys; never modified.
        scratch: Instead of ``cache``: per-layer (k, v) buffers (B, K, S, E) whose first
            S - T positions already hold the cached keys/values (``kv_scratch``); this call
            writes its own k/v into the last T positions (no concatenation per call).
        build_cache: Also return the per-layer (k, v) of these tokens (post-RoPE).
        need_output: False: stop after the last layer's k/v (prefix cache only).

    Returns:
        The (B, T, D) hidden states before the final norm (None if not needed) and the new
        cache (or None).
    """
    b, t, _ = x.shape
    n, kh, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qk_cols = (n + kh) * e
    new_cache = []
    for idx, w in enumerate(weights):
        last = idx == len(weights) - 1
        qkv = _project(rms_norm(x, w.in_scale), w.qkv)  # (B, T, (N + 2K) * E)
        v = qkv[..., qk_cols:].view(b, t, kh, e).transpose(1, 2)  # (B, K, T, E)
        if last and not need_output:
            k = apply_rope_fast(qkv[..., n * e:qk_cols].view(b, t, kh, e), cos, signed_sin)
            new_cache.append((k.transpose(1, 2), v.contiguous()))
            break
        qk = apply_rope_fast(qkv[..., :qk_cols].view(b, t, n + kh, e), cos, signed_sin)
        k = qk[:, :, n:].transpose(1, 2)  # (B, K, T, E)
        if build_cache:
            # Own copies: views would keep this layer's whole q/k/v activations alive.
            new_cache.append((k.contiguous(), v.contiguous()))
        if scratch is not None:
            k_buf, v_buf = scratch[idx]
            k_buf[:, :, -t:].copy_(k)
            v_buf[:, :, -t:].copy_(v)
            k, v = k_buf, v_buf
        elif cache is not None:
            k = torch.cat([cache[idx][0], k], dim=2)
            v = torch.cat([cache[idx][1], v], dim=2)
        x = x + _project(attend(qk[:, :, :n], k, v, bias, cfg), w.o)
        x = x + _mlp(rms_norm(x, w.post_scale), w.gate_up, w.down)
    else:
        return x, (tuple(new_cache) if build_cache else None)
    return None, tuple(new_cache)
