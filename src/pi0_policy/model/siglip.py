"""
SigLIP vision tower (ViT without pooling) as used by PaliGemma / π0.

Pre-LayerNorm blocks with biased multi-head self-attention and a tanh-GELU MLP, a final LayerNorm;
no mask, no pooling (spec §1.2). The patch convolution and the positional embedding run in float32
(their parameters stay float32 in every dtype mode); LayerNorm math is float32; the encoder matmuls
run in the model's compute dtype.

Shape letters: B images, P patches (tokens) per image, W width.
"""

from __future__ import annotations

from pi0_policy.model.config import NORM_EPS, SiglipConfig
from pi0_policy.model.layers import Linear
import torch
from torch import nn
import torch.nn.functional as F


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activation and parameter dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last axis in float32 and cast back to the dtype of ``x``."""
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


class SiglipEmbeddings(nn.Module):
    """Patch convolution (with bias) plus learned positional embedding."""

    def __init__(self, cfg: SiglipConfig) -> None:
        """Create the patch convolution and the positional table."""
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) pixels in [-1, 1] to (B, P, W) float32 tokens."""
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixels.to(weight.dtype))  # (B, W, H/p, W/p)
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipAttention(nn.Module):
    """Plain multi-head self-attention with biases."""

    def __init__(self, cfg: SiglipConfig) -> None:
        """Create the q/k/v/out projections."""
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = Linear(cfg.width, cfg.width)
        self.k_proj = Linear(cfg.width, cfg.width)
        self.v_proj = Linear(cfg.width, cfg.width)
        self.out_proj = Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend (B, P, W) -> (B, P, W)."""
        b, p, w = x.shape
        e = w // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, p, self.num_heads, e).transpose(1, 2)

        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=e ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, p, w))


class SiglipMLP(nn.Module):
    """Dense -> tanh-GELU -> Dense, with biases."""

    def __init__(self, cfg: SiglipConfig) -> None:
        """Create fc1 and fc2."""
        super().__init__()
        self.fc1 = Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to (..., W)."""
        return self.fc2(F.gelu(self.fc1(x), approximate='tanh'))


class SiglipLayer(nn.Module):
    """Pre-LN encoder block: ``x += attn(ln1(x)); x += mlp(ln2(x))``."""

    def __init__(self, cfg: SiglipConfig) -> None:
        """Create the block."""
        super().__init__()
        self.layer_norm1 = LayerNorm32(cfg.width, eps=NORM_EPS)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = LayerNorm32(cfg.width, eps=NORM_EPS)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, P, W)."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    """The stack of encoder blocks."""

    def __init__(self, cfg: SiglipConfig) -> None:
        """Create ``cfg.depth`` blocks."""
        super().__init__()
        self.layers = nn.ModuleList(SiglipLayer(cfg) for _ in range(cfg.depth))


class SiglipVisionTower(nn.Module):
    """Embeddings, encoder and ``post_layernorm``; returns per-patch tokens."""

    def __init__(self, cfg: SiglipConfig) -> None:
        """Create the tower from its config."""
        super().__init__()
        self.config = cfg
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = LayerNorm32(cfg.width, eps=NORM_EPS)

    def forward(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """
        Encode images.

        Args:
            pixels: (B, 3, H, W) in [-1, 1].
            dtype: Compute dtype of the encoder (default: its weights' dtype).

        Returns:
            (B, P, W) tokens in the compute dtype.
        """
        if dtype is None:
            dtype = self.encoder.layers[0].self_attn.q_proj.weight.dtype
        x = self.embeddings(pixels).to(dtype)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)
