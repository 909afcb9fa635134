"""
Real-time chunking (RTC): sampling a new chunk that continues the previous one.

Inference-time RTC (Black, Galliker, Levine 2025, Algorithm 1; PI's real-time-chunking-kinetix
``model.py`` is the reference) guides every denoising step towards the previous chunk's
unexecuted leftover ``Y`` under a soft mask ``W``. In openpi's time convention (t = 1 noise,
t = 0 data; deployment reference §4.3), one guided step at flow time t is::

    x1 = x_t - t * v(x_t)                                   # clean-chunk estimate
    g = ((Y - x1) * W)^T d x1 / d x_t                       # one vector-Jacobian product
    v_guided = v - min(beta, (t^2 + (1 - t)^2) / (t (1 - t))) * g

The Jacobian is taken through the whole denoiser (the action expert; the prefix KV cache is a
constant). Training-time RTC (Black, Ren, Equi, Levine 2025) needs no guidance: a checkpoint
trained with delay conditioning gets the first d actions clean (flow time 0) at every step.

Y and the sampled chunk are in model space (normalised, padded to the model's action width). Y is
padded along the horizon by repeating its last action, never with zeros (zero is the dataset mean
in normalised space).

Shape letters: B batch, H horizon, A action dim.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math

import torch

SCHEDULE_EXP = 'exp'
SCHEDULE_LINEAR = 'linear'
SCHEDULE_ONES = 'ones'
SCHEDULE_ZEROS = 'zeros'
# Soft-mask schedules over the overlap region (exp is the paper's default).
SCHEDULES = (SCHEDULE_EXP, SCHEDULE_LINEAR, SCHEDULE_ONES, SCHEDULE_ZEROS)
# Clip of the guidance weight (beta). The kinetix reference uses 5 with 5 flow steps; LeRobot
# recommends 10 for 10-step π0, the default here.
DEFAULT_MAX_GUIDANCE_WEIGHT = 10.0

# A denoiser at a fixed observation and flow time: (B, H, A) x_t -> (B, H, A) velocity.
Velocity = Callable[[torch.Tensor], torch.Tensor]


def prefix_weights(start: int, end: int, total: int, schedule: str = SCHEDULE_EXP,
                   *, device: torch.device | str = 'cpu') -> torch.Tensor:
    """
    Return the soft mask W over a chunk's indices.

    ``W_i = 1`` for i < start (the frozen actions), decays over [start, end) by the schedule and is
    0 from ``end`` on (the old chunk has no actions there). ``start`` is clipped to ``end``.

    Args:
        start: The inference delay d (actions executed while the chunk is computed).
        end: H - s, the length of the previous chunk's leftover.
        total: The horizon H.
        schedule: 'exp' (default), 'linear', 'ones' (1 up to ``end``) or 'zeros' (hard mask:
            1 below ``start`` only).
        device: Where to put the mask.

    Returns:
        (H,) float32.

    Raises:
        ValueError: On an unknown schedule or indices outside 0 <= start, end <= total.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f'RTC schedule must be one of {SCHEDULES}, got {schedule!r}.')
    if not (0 <= start and 0 <= end <= total):
        raise ValueError(
            f'RTC mask needs 0 <= start and 0 <= end <= total, got start={start}, end={end}, '
            f'total={total}.')
    start = min(start, end)
    i = torch.arange(total, dtype=torch.float32, device=device)
    if schedule == SCHEDULE_ONES:
        w = torch.ones(total, device=device)
    elif schedule == SCHEDULE_ZEROS:
        w = (i < start).float()
    else:
        # (end - i) / (end - start + 1): 1 before start, then linearly down to 0 at end.
        w = ((start - 1 - i) / (end - start + 1) + 1).clamp(0.0, 1.0)
        if schedule == SCHEDULE_EXP:
            w = w * torch.expm1(w) / (math.e - 1)
    return torch.where(i >= end, torch.zeros_like(w), w)


def guidance_weight(t: float, max_weight: float) -> float:
    """
    Return the RTC guidance weight ``min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))``.

    The weight is symmetric in t and 1 - t and infinite at both ends, where it is beta.

    Args:
        t: Flow time (openpi convention, 1 = noise).
        max_weight: beta, the clip.

    Returns:
        The weight.
    """
    if t <= 0.0 or t >= 1.0:
        return float(max_weight)
    return float(min(max_weight, (t * t + (1 - t) ** 2) / (t * (1 - t))))


@dataclasses.dataclass(frozen=True)
class ChunkPrior:
    """What the previous chunk says about the next one (one RTC inference)."""

    # (B, H, A) the previous chunk's leftover Y in model space, aligned to the new chunk's index
    # 0 and padded to H by repeating its last action.
    target: torch.Tensor
    # (H,) float32 soft mask W (``prefix_weights``).
    weights: torch.Tensor
    # Inference delay d in control steps: the first d actions execute from the old chunk.
    delay: int
    # Clip beta of the guidance weight.
    max_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT

    @classmethod
    def from_leftover(cls, leftover: torch.Tensor, *, delay: int, horizon: int,
                      schedule: str = SCHEDULE_EXP,
                      max_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT) -> ChunkPrior:
        """
        Build the prior from the previous chunk's unexecuted actions.

        Args:
            leftover: (B, n, A) or (n, A) model-space actions not yet executed when the new
                inference starts (n = H - s for execution horizon s), 1 <= n <= H.
            delay: d, with 0 <= d <= n (s <= H - d).
            horizon: H.
            schedule: Soft-mask schedule (``SCHEDULES``).
            max_weight: beta >= 0.

        Returns:
            The prior; its mask is ``prefix_weights(d, n, H, schedule)``.

        Raises:
            ValueError: On bad shapes, delay or beta.
        """
        y = leftover if leftover.dim() == 3 else leftover[None]
        n = y.shape[1]
        if y.dim() != 3 or not 1 <= n <= horizon:
            raise ValueError(
                f'RTC leftover must be (B, n, A) or (n, A) with 1 <= n <= horizon={horizon}, '
                f'got shape {tuple(leftover.shape)}.')
        if not 0 <= delay <= n:
            raise ValueError(
                f'RTC delay d={delay} must satisfy 0 <= d <= len(leftover)={n} (d <= s <= H - d '
                f'with H={horizon}, s={horizon - n}); execute more of the chunk before the next '
                'inference or lower the delay.')
        if not max_weight >= 0:
            raise ValueError(f'RTC max guidance weight must be >= 0, got {max_weight}.')
        y = y.float()
        if n < horizon:
            y = torch.cat([y, y[:, -1:].expand(-1, horizon - n, -1)], dim=1)
        return cls(target=y, weights=prefix_weights(delay, n, horizon, schedule,
                                                    device=y.device),
                   delay=int(delay), max_weight=float(max_weight))


def guided_velocity(velocity: Velocity, x_t: torch.Tensor, t: float,
                    prior: ChunkPrior) -> torch.Tensor:
    """
    Return the RTC-guided velocity at (x_t, t) (one vector-Jacobian product through ``velocity``).

    Args:
        velocity: The denoiser at this observation and flow time; must be differentiable.
        x_t: (B, H, A) sample at flow time t.
        t: Flow time in (0, 1].
        prior: The previous chunk's leftover and mask.

    Returns:
        (B, H, A) float32 ``v - w * g`` (detached).
    """
    weight = guidance_weight(t, prior.max_weight)
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().clone().float().requires_grad_(True)
        v = velocity(x)
        if weight == 0.0:
            return v.detach()
        x1 = x - t * v  # clean-chunk estimate
        with torch.no_grad():  # the error is the cotangent, a constant
            err = (prior.target.to(x1.device) - x1) * prior.weights.to(x1.device)[None, :, None]
        (g,) = torch.autograd.grad(x1, x, grad_outputs=err)
    return (v - weight * g).detach()


def inpaint(x: torch.Tensor, prior: ChunkPrior) -> torch.Tensor:
    """
    Return ``x`` with its first d actions replaced by the prior's (training-time RTC).

    Args:
        x: (B, H, A) sample.
        prior: Its ``target[:, :delay]`` is written.

    Returns:
        (B, H, A) a new tensor.
    """
    d = prior.delay
    out = x.clone()
    out[:, :d] = prior.target[:, :d].to(out)
    return out


def inpainted_times(t: float, batch: int, horizon: int, delay: int,
                    device: torch.device | str = 'cpu') -> torch.Tensor:
    """
    Return per-action flow times: 0 (clean) for the first ``delay`` actions, t for the rest.

    Args:
        t: Flow time of the step.
        batch: B.
        horizon: H.
        delay: d.
        device: Target device.

    Returns:
        (B, H) float32.
    """
    times = torch.full((batch, horizon), float(t), dtype=torch.float32, device=device)
    times[:, :delay] = 0.0
    return times
