"""Optimiser pieces: AdamW parameter groups, warmup + cosine learning rate, EMA of the weights."""

from __future__ import annotations

import math

import torch
from torch import nn


def learning_rate(step: int, *, peak_lr: float, warmup_steps: int, decay_lr: float,
                  decay_steps: int) -> float:
    """
    Return the learning rate of a step (openpi's CosineDecaySchedule).

    Linear warmup from ``peak_lr / (warmup_steps + 1)`` to ``peak_lr`` over ``warmup_steps``,
    then cosine decay to ``decay_lr`` at ``decay_steps``, constant after.
    """
    if step < warmup_steps:
        init = peak_lr / (warmup_steps + 1)
        return init + (peak_lr - init) * step / warmup_steps
    span = max(1, decay_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return decay_lr + (peak_lr - decay_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, *, lr: float, b1: float, b2: float, eps: float,
                   weight_decay: float) -> torch.optim.AdamW:
    """Build AdamW over the trainable parameters; matrices decay, vectors (norms, biases) not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{'params': decay, 'weight_decay': weight_decay},
              {'params': no_decay, 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps)


class Ema:
    """Exponential moving average of the trainable parameters (float32 shadow copies)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        """Start the average at the current weights."""
        self.decay = float(decay)
        self.shadow = {name: p.detach().float().clone()
                       for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the current weights: ``e = d * e + (1 - d) * w``."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into a model of the same architecture."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))
