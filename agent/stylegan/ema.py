"""Exponential moving average of the generator weights (the model that is sampled and released)."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(*, batch_size: int, half_life_images: float) -> float:
    """Per-step decay so that the average forgets half its weight after ``half_life_images`` images."""
    return 0.5 ** (batch_size / max(half_life_images, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, *, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (w_avg, noise) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
