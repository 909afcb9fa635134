"""
Gemma blocks and the joint (mixture-of-transformers) attention shared by π0's two experts.

Each expert (the PaliGemma LLM and the action expert) has its own norms, q/k/v/o projections and
GeGLU MLP; at every layer the q/k/v of all active experts are concatenated along the sequence and
attend jointly (spec §1.3). The attention runs through ``scaled_dot_product_attention`` with the
query heads of one key/value head folded into the query length, so multi-query and grouped-query
attention are one batched matmul without repeating K/V. The folded query rows are ordered
(token, head) so that with one key/value head (π0) folding and unfolding are free views.

Two paths run the same math: ``joint_forward`` (any set of experts, autograd; the training loss)
and ``stack_forward`` (one expert, inference only), which uses the fused q/k/v and gate/up
weights (``pi0_policy.model.compute.fuse_rows``), precomputed norm scales and RoPE tables, and
rotates queries and keys in one pass. Both give bit-identical float32 results, except that long
inputs run the inference MLP in token blocks (``MLP_BLOCK_ELEMENTS``), which may round differently.

Shape letters: B batch, T query tokens, S key tokens, D width, N query heads, K key/value heads,
G = N / K query heads per key/value head, E head_dim.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import NamedTuple

from pi0_policy.model.compute import fuse_rows, Linear, linear
from pi0_policy.model.config import GemmaConfig, NORM_EPS, ROPE_BASE
import torch
from torch import nn
import torch.nn.functional as F

# Additive value of masked attention logits (finite, as in the peers, so that a fully masked
# query row becomes a uniform distribution instead of NaN).
BIG_NEG = -2.3819763e38

# Rows of the fused gate/up output whose length is a multiple of this go through the vectorised
# GELU without a per-row scalar tail (2 vectors of 16 floats per iteration with AVX-512).
GELU_ROW_ALIGN = 64
# Largest (tokens x 2 * mlp_dim) gate/up activation computed at once by the inference MLP.
MLP_BLOCK_ELEMENTS = 1 << 21

# One (k, v) pair per layer, each (B, K, S, E), post-RoPE.
KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class RMSNorm(nn.Module):
    """Gemma RMSNorm ``x * rsqrt(mean(x^2) + eps) * (1 + w)``, computed in float32."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        """Create the norm with its scale ``w`` (stored without the +1)."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self._scale: torch.Tensor | None = None
        self._scale_key: tuple[int, int, torch.device] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last axis; the result has the dtype of ``x``."""
        return rms_norm(x, 1.0 + self.weight.float(), self.eps)

    def scale(self) -> torch.Tensor:
        """
        Return the float32 ``1 + w`` (cached while the weight is unchanged; for inference).

        Returns:
            (D,) float32, a normal tensor even when built inside ``torch.inference_mode``.
        """
        w = self.weight
        key = (w.data_ptr(), w._version, w.device)
        if self._scale is None or key != self._scale_key:
            with torch.inference_mode(False), torch.no_grad():
                self._scale = 1.0 + w.detach().float()
            self._scale_key = key
        return self._scale


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """
    Apply ``x * rsqrt(mean(x^2) + eps) * scale`` in float32 over the last axis.

    Args:
        x: (..., D).
        scale: (D,) float32, ``1 + w``.
        eps: Variance epsilon.

    Returns:
        (..., D) in the dtype of ``x``.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * scale).type_as(x)


class GemmaAttention(nn.Module):
    """Per-expert attention projections (no biases); the attention itself is joint."""

    def __init__(self, cfg: GemmaConfig) -> None:
        """Create q/k/v/o for ``cfg.num_heads`` query and ``cfg.num_kv_heads`` kv heads."""
        super().__init__()
        self.q_proj = Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)
        self._qkv: torch.Tensor | None = None

    def fused_qkv(self, copy: bool = True) -> torch.Tensor | None:
        """Return the ((N + 2K) * E, D) fused q/k/v weight (see ``fuse_rows``)."""
        self._qkv = fuse_rows((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight),
                              self._qkv, copy=copy)
        return self._qkv


class GemmaMLP(nn.Module):
    """GeGLU feed-forward ``down(gelu_tanh(gate(x)) * up(x))``, no biases."""

    def __init__(self, cfg: GemmaConfig) -> None:
        """Create the gate, up and down projections."""
        super().__init__()
        self.gate_proj = Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = Linear(cfg.mlp_dim, cfg.width, bias=False)
        self._gate_up: torch.Tensor | None = None

    def fused_gate_up(self, copy: bool = True) -> torch.Tensor | None:
        """Return the (2 * mlp_dim, D) fused gate/up weight (see ``fuse_rows``)."""
        self._gate_up = fuse_rows((self.gate_proj.weight, self.up_proj.weight), self._gate_up,
                                  copy=copy)
        return self._gate_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to (..., D)."""
        return self.down_proj(F.gelu(self.gate_proj(x), approximate='tanh') * self.up_proj(x))


class GemmaLayer(nn.Module):
    """One pre-norm Gemma block of one expert."""

    def __init__(self, cfg: GemmaConfig) -> None:
        """Create the norms, attention projections and MLP."""
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.width)
        self.self_attn = GemmaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.width)
        self.mlp = GemmaMLP(cfg)


class GemmaStack(nn.Module):
    """One expert: optional token embedding, ``depth`` blocks and the final norm."""

    def __init__(self, cfg: GemmaConfig) -> None:
        """Create the expert from its config."""
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width) if cfg.vocab_size else None
        self.layers = nn.ModuleList(GemmaLayer(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)

    def fuse_weights(self, copy: bool = True) -> bool:
        """Fuse q/k/v and gate/up of every layer; return whether all could be fused."""
        ok = True
        for layer in self.layers:
            ok &= layer.self_attn.fused_qkv(copy) is not None
            ok &= layer.mlp.fused_gate_up(copy) is not None
        return ok

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """
        Embed token ids and scale by sqrt(width) (the scale rounded to the table's dtype).

        Args:
            tokens: (B, L) integer ids.

        Returns:
            (B, L, D) embeddings in the table's dtype.

        Raises:
            RuntimeError: If this expert has no embedding table.
        """
        if self.embed_tokens is None:
            raise RuntimeError('This Gemma expert has no token embedding (vocab_size=0).')
        weight = self.embed_tokens.weight
        scale = torch.tensor(math.sqrt(self.config.width), dtype=weight.dtype)
        return F.embedding(tokens, weight) * scale.to(weight.device)


def rope_cos_sin(positions: torch.Tensor, head_dim: int,
                 base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Compute the half-split RoPE tables in float32.

    Args:
        positions: (B, T) integer positions.
        head_dim: E.
        base: RoPE max wavelength.

    Returns:
        cos and sin, each (B, T, E) float32.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
    inv_freq = 1.0 / (base ** (exponent / head_dim))  # (E/2,)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, E/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """
    Rotate (B, T, H, E) by (B, T, E) tables (rotate_half convention), in float32.

    Args:
        x: (B, T, H, E) queries or keys.
        cos: (B, T, E) float32.
        sin: (B, T, E) float32.

    Returns:
        (B, T, H, E) in the dtype of ``x``.
    """
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos[:, :, None] + rotated * sin[:, :, None]).to(x.dtype)


def prefix_lm_allowed(ar: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """
    Apply the cumsum rule: query i sees key j iff ``c[j] <= c[i]`` and both are valid.

    Args:
        ar: (B, T) or (T,) integer autoregressive markers.
        valid: (B, T) bool.

    Returns:
        (B, T, T) bool, True where attention is allowed.
    """
    c = torch.cumsum(ar.expand_as(valid).to(torch.int64), dim=-1)
    return (c[:, None, :] <= c[:, :, None]) & valid[:, :, None] & valid[:, None, :]


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


def _folded_bias(allowed: torch.Tensor | None, groups: int,
                 dtype: torch.dtype) -> torch.Tensor | None:
    """Turn (B, T, S) bool into the additive (B, 1, T*G, S) mask of the folded layout."""
    if allowed is None:
        return None
    b, t, s = allowed.shape
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias = bias.masked_fill(~allowed, BIG_NEG)
    return bias[:, None, :, None].expand(b, 1, t, groups, s).reshape(b, 1, t * groups, s)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
            cfg: GemmaConfig) -> torch.Tensor:
    """
    Attend (B, T, N, E) queries to (B, K, S, E) keys/values; returns (B, T, N*E).

    The G query heads of each kv head are folded into the query length, rows ordered
    (token, head): free views when K = 1.
    """
    b, t, n, e = q.shape
    kh = cfg.num_kv_heads
    g = n // kh
    qf = q.reshape(b, t, kh, g, e).transpose(1, 2).reshape(b, kh, t * g, e)
    out = F.scaled_dot_product_attention(qf, k, v, attn_mask=bias, scale=e ** -0.5)
    return out.view(b, kh, t, g, e).transpose(1, 2).reshape(b, t, n * e)


class LayerWeights(NamedTuple):
    """The tensors of one Gemma layer used by ``stack_forward`` (inference)."""

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


def prepare_layers(stack: GemmaStack) -> tuple[LayerWeights, ...] | None:
    """
    Collect (fusing if needed) the inference tensors of every layer of an expert.

    Args:
        stack: The expert.

    Returns:
        One ``LayerWeights`` per layer, or None if the weights cannot be fused (meta tensors,
        mixed dtypes); callers then use ``joint_forward``.
    """
    out = []
    for layer in stack.layers:
        qkv = layer.self_attn.fused_qkv()
        gate_up = layer.mlp.fused_gate_up()
        if qkv is None or gate_up is None:
            return None
        out.append(LayerWeights(layer.input_layernorm.scale(), qkv,
                                layer.self_attn.o_proj.weight,
                                layer.post_attention_layernorm.scale(), gate_up,
                                layer.mlp.down_proj.weight))
    return tuple(out)


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
    Apply the GeGLU MLP with fused gate/up weights, in token blocks for long sequences.

    Blocks of at most ``MLP_BLOCK_ELEMENTS`` gate/up outputs bound the transient memory of the
    (T, 2F) activations (the prefix at full size); short inputs run as one block.

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
        weights: From ``prepare_layers``.
        x: (B, T, D) input embeddings in the compute dtype.
        cos: (B, T, 1, E) and signed_sin (B, T, 1, E) from ``rope_tables``.
        signed_sin: See ``cos``.
        bias: (B, 1, T*G, S) additive mask from ``_folded_bias`` (S = cached length + T), or
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
        x = x + _project(_attend(qk[:, :, :n], k, v, bias, cfg), w.o)
        x = x + _mlp(rms_norm(x, w.post_scale), w.gate_up, w.down)
    else:
        return x, (tuple(new_cache) if build_cache else None)
    return None, tuple(new_cache)


def joint_forward(
    stacks: Sequence[GemmaStack],
    hiddens: Sequence[torch.Tensor | None],
    positions: torch.Tensor,
    allowed: torch.Tensor | None,
    *,
    cache: KVCache | None = None,
    build_cache: bool = False,
    need_output: Sequence[bool] | None = None,
) -> tuple[list[torch.Tensor | None], KVCache | None]:
    """
    Run all layers of the experts jointly over their concatenated tokens.

    Args:
        stacks: The experts, in token order.
        hiddens: Per expert (B, T_e, D_e) input embeddings, or None if the expert is inactive.
        positions: (B, T) RoPE positions of the active tokens (T = sum of T_e).
        allowed: (B, T, S) bool attention mask, S = cached length + T; None = all allowed.
        cache: Read-only per-layer prefix (k, v) to prepend to the keys; never modified.
        build_cache: Also return the per-layer (k, v) of these tokens (post-RoPE).
        need_output: Per expert whether its final output is needed (default: all active);
            the last layer skips the attention output and MLP of the others.

    Returns:
        Per expert the final-normed (B, T_e, D_e) output (None if inactive or not needed),
        and the new cache (or None).
    """
    cfg = stacks[0].config
    active = [i for i, h in enumerate(hiddens) if h is not None]
    need = [bool(hiddens[i] is not None) if need_output is None else
            bool(need_output[i] and hiddens[i] is not None) for i in range(len(stacks))]
    lengths = [hiddens[i].shape[1] for i in active]
    dtype = hiddens[active[0]].dtype
    cos, sin = rope_cos_sin(positions, cfg.head_dim)
    groups = cfg.num_heads // cfg.num_kv_heads
    bias = _folded_bias(allowed, groups, dtype)
    h = {i: hiddens[i] for i in active}
    new_cache = []
    for layer_idx in range(cfg.depth):
        last = layer_idx == cfg.depth - 1
        qs, ks, vs, normed = [], [], [], {}
        for i in active:
            layer = stacks[i].layers[layer_idx]
            x = layer.input_layernorm(h[i])
            b, t, _ = x.shape
            normed[i] = x
            ks.append(layer.self_attn.k_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim))
            vs.append(layer.self_attn.v_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim))
        k = apply_rope(torch.cat(ks, 1) if len(ks) > 1 else ks[0], cos, sin).transpose(1, 2)
        v = (torch.cat(vs, 1) if len(vs) > 1 else vs[0]).transpose(1, 2)
        if build_cache:
            new_cache.append((k, v))
        if cache is not None:
            k = torch.cat([cache[layer_idx][0], k], dim=2)
            v = torch.cat([cache[layer_idx][1], v], dim=2)
        # Experts whose queries are computed in this layer (all but, at the last layer, the
        # ones whose output nobody reads).
        query_experts = [i for i in active if need[i]] if last else active
        if not query_experts:
            break
        starts = dict(zip(active, [sum(lengths[:j]) for j in range(len(active))]))
        rows = [slice(starts[i], starts[i] + h[i].shape[1]) for i in query_experts]
        for i in query_experts:
            layer = stacks[i].layers[layer_idx]
            b, t, _ = normed[i].shape
            qs.append(layer.self_attn.q_proj(normed[i]).view(b, t, cfg.num_heads, cfg.head_dim))
        q = torch.cat(qs, 1) if len(qs) > 1 else qs[0]
        if len(query_experts) == len(active):
            q_cos, q_sin, q_bias = cos, sin, bias
        else:
            q_cos = torch.cat([cos[:, r] for r in rows], 1)
            q_sin = torch.cat([sin[:, r] for r in rows], 1)
            q_bias = None if allowed is None else _folded_bias(
                torch.cat([allowed[:, r] for r in rows], 1), groups, dtype)
        out = _attend(apply_rope(q, q_cos, q_sin), k, v, q_bias, cfg)
        offset = 0
        for i in query_experts:
            layer = stacks[i].layers[layer_idx]
            t = h[i].shape[1]
            x = h[i] + layer.self_attn.o_proj(out[:, offset:offset + t])
            offset += t
            h[i] = x + layer.mlp(layer.post_attention_layernorm(x))
    outputs: list[torch.Tensor | None] = [None] * len(stacks)
    for i in active:
        if need[i]:
            outputs[i] = stacks[i].norm(h[i])
    return outputs, (tuple(new_cache) if build_cache else None)
