"""
Random initialisation of π0 parameters in place (tests and benchmarks; no checkpoint needed).

``build_empty`` (in ``pi0_policy.model.pi0``) allocates a model; ``init_random`` fills it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pi0_policy.model.pi0 import Pi0Model

# Benchmark-only initialisation (``init_random(tiled=True)``): length of the one random normal
# buffer that is tiled over every matrix (a prime, so tiles do not line up with rows).
TILED_INIT_BUFFER = 1_048_573


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
