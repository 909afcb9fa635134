"""
The one linear layer of π0: it computes in the dtype of its input.

With bfloat16 storage and float32 activations (the mixed-precision mode of ``Pi0Model``), the
weight is cast to the activation dtype for the call; the cast is differentiable, so gradients
reach bfloat16 parameters too. Faster, memory-frugal upcasting is the engine's business
(``pi0_policy.engine.compute``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    Apply ``x @ weight.T + bias`` in the dtype of ``x``.

    Args:
        x: (..., in) activations; their dtype is the compute dtype.
        weight: (out, in) in any floating dtype.
        bias: Optional (out,).

    Returns:
        (..., out) in the dtype of ``x``.
    """
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return F.linear(x, weight if weight.dtype == x.dtype else weight.to(x.dtype), bias)


class Linear(torch.nn.Linear):
    """``nn.Linear`` that computes in the dtype of its input (see ``linear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to (..., in)."""
        return linear(x, self.weight, self.bias)
