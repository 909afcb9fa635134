"""
Flow-matching time helpers of π0: sampling time grids, training times, sinusoidal time embedding.

Conventions (spec §2-§4): t = 1 is noise and t = 0 data; sampling integrates from t = 1 with
``dt = -1/num_steps``; training draws t from ``Beta(1.5, 1) * 0.999 + 0.001``.
"""

from __future__ import annotations

import math

from pi0_policy.model.config import TIME_MAX_PERIOD, TIME_MIN_PERIOD
import torch

# Training-time distribution of t: Beta(alpha, beta) * scale + offset.
TIME_BETA_ALPHA = 1.5
TIME_BETA_BETA = 1.0
TIME_SCALE = 0.999
TIME_OFFSET = 0.001


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


def as_time(time: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """
    Return flow times as a (B,) or (B, H) float32 tensor on the device of ``like``.

    Args:
        time: A scalar, (B,) flow times, or (B, H) per action (training-time RTC).
        like: (B, H, ...) tensor giving B, H and the device.

    Returns:
        (B,) or (B, H) float32.

    Raises:
        ValueError: If ``time`` is neither a scalar, (B,) nor (B, H).
    """
    b, h = like.shape[:2]
    time = torch.as_tensor(time, dtype=torch.float32, device=like.device)
    if time.dim() == 0:
        time = time.expand(b)
    if tuple(time.shape) not in ((b,), (b, h)):
        raise ValueError(
            f'time must be a scalar, (B,) = ({b},) or (B, H) = ({b}, {h}), got '
            f'{tuple(time.shape)}.')
    return time
