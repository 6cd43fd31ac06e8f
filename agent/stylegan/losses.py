"""StyleGAN2 losses: non-saturating logistic GAN loss and the R1 gradient penalty.

Functions take logits and return *per-sample* losses (shape (B,)); callers take the mean. That way
the same code serves the ordinary batch step and the DP-SGD per-sample step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample discriminator loss softplus(-D(real)) + softplus(D(fake))."""
    return F.softplus(-real_logits) + F.softplus(fake_logits)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample generator loss softplus(-D(G(z)))."""
    return F.softplus(-fake_logits)


def r1_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample R1 penalty |grad_x D(x)|^2 on real images, differentiable w.r.t. D's weights.

    Returns ``(penalty (B,), real_logits (B,))``; the caller multiplies by gamma / 2. Because D has
    no cross-sample layers (no mbstd under DP), the gradient of sum(D(x)) w.r.t. x_i is exactly
    grad D(x_i); with mbstd on (local mode) it is the batch-summed gradient, as in StyleGAN2.
    """
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(dim=1), logits
