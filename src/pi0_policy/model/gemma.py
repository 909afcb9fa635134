"""
Gemma blocks and the joint (mixture-of-transformers) attention shared by π0's two experts.

Each expert (the PaliGemma LLM and the action expert) has its own norms, q/k/v/o projections and
GeGLU MLP; at every layer the q/k/v of all active experts are concatenated along the sequence and
attend jointly (spec §1.3). The attention runs through ``scaled_dot_product_attention`` with the
query heads of one key/value head folded into the query length, so multi-query and grouped-query
attention are one batched matmul without repeating K/V. The folded query rows are ordered
(token, head) so that with one key/value head (π0) folding and unfolding are free views.

``joint_forward`` is the one forward path of the model (training loss, prefix cache, denoising
steps, RTC guidance); it is differentiable. Fast inference lives in ``pi0_policy.engine``.

Shape letters: B batch, T query tokens, S key tokens, D width, N query heads, K key/value heads,
G = N / K query heads per key/value head, E head_dim.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

from pi0_policy.model.config import GemmaConfig, NORM_EPS, ROPE_BASE
from pi0_policy.model.layers import Linear
import torch
from torch import nn
import torch.nn.functional as F

# Additive value of masked attention logits (finite, as in the peers, so that a fully masked
# query row becomes a uniform distribution instead of NaN).
BIG_NEG = -2.3819763e38

# One (k, v) pair per layer, each (B, K, S, E), post-RoPE.
KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class RMSNorm(nn.Module):
    """Gemma RMSNorm ``x * rsqrt(mean(x^2) + eps) * (1 + w)``, computed in float32."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        """Create the norm with its scale ``w`` (stored without the +1)."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last axis; the result has the dtype of ``x``."""
        return rms_norm(x, 1.0 + self.weight.float(), self.eps)


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


class GemmaMLP(nn.Module):
    """GeGLU feed-forward ``down(gelu_tanh(gate(x)) * up(x))``, no biases."""

    def __init__(self, cfg: GemmaConfig) -> None:
        """Create the gate, up and down projections."""
        super().__init__()
        self.gate_proj = Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = Linear(cfg.mlp_dim, cfg.width, bias=False)

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


def folded_bias(allowed: torch.Tensor | None, groups: int,
                dtype: torch.dtype) -> torch.Tensor | None:
    """Turn (B, T, S) bool into the additive (B, 1, T*G, S) mask of the folded layout."""
    if allowed is None:
        return None
    b, t, s = allowed.shape
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias = bias.masked_fill(~allowed, BIG_NEG)
    return bias[:, None, :, None].expand(b, 1, t, groups, s).reshape(b, 1, t * groups, s)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
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
    bias = folded_bias(allowed, groups, dtype)
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
            q_bias = None if allowed is None else folded_bias(
                torch.cat([allowed[:, r] for r in rows], 1), groups, dtype)
        out = attend(apply_rope(q, q_cos, q_sin), k, v, q_bias, cfg)
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
