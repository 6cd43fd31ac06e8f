"""Exact per-sample gradients of the full discriminator loss, R1 penalty included.

Opacus' hook-based per-sample gradients cannot differentiate through a gradient penalty (double
backward), so the whole per-sample loss is written as a function of (parameters, one real, one
fake) and differentiated with ``torch.func.vmap(torch.func.grad(...))``; the R1 term inside uses
``torch.func.grad`` with respect to the input image (DESIGN.md, "Opacus 1.6 and GAN critics").
One real and one fake form one sample, so a fake is charged once, in the same step as its real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def per_sample_discriminator_grads(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, *,
                                   r1_gamma: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of softplus(-D(x_i)) + softplus(D(f_i)) + gamma/2 |grad_x D(x_i)|^2 for each i.

    Parameters
    ----------
    discriminator : a module whose output for one image depends on that image only (no mbstd, no
        BatchNorm); its buffers are treated as constants.
    real, fake : (B, C, H, W) images, already augmented; ``fake`` is detached from the generator.
    r1_gamma : weight of the R1 penalty (0 disables it).

    Returns
    -------
    grads : parameter name -> (B, *param.shape) per-sample gradients (trainable parameters only).
    losses : (B,) per-sample losses (detached), for logging.

    Raises
    ------
    ValueError
        If the discriminator mixes samples (minibatch stddev on) or the batch shapes differ.
    """
    if getattr(discriminator, "mbstd_group_size", 0):
        raise ValueError("per-sample gradients need a discriminator without minibatch stddev "
                         "(set mbstd_group_size=0 for federated-dp training)")
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} batches must have the same shape")
    params = {k: v.detach() for k, v in discriminator.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in discriminator.named_buffers()}

    def logit(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(discriminator, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    def sample_loss(p: dict[str, torch.Tensor], x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.softplus(-logit(p, x)) + F.softplus(logit(p, f))
        if r1_gamma:
            grad_x = grad(lambda img: logit(p, img))(x)
            loss = loss + 0.5 * r1_gamma * grad_x.square().sum()
        return loss, loss.detach()

    grads, losses = vmap(grad(sample_loss, has_aux=True), in_dims=(None, 0, 0))(params, real, fake)
    return grads, losses
