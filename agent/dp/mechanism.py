"""The Gaussian mechanism on per-unit gradients, through Opacus' ``DPOptimizer``.

We compute per-unit gradients ourselves (:mod:`agent.dp.per_sample_grads`) and hand them to
Opacus as ``p.grad_sample``; Opacus then clips each unit's gradient to ``max_grad_norm`` (over all
parameters jointly), sums, adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` per coordinate and
divides by the *expected* number of units. Accounting is deliberately not attached here: the
durable accountant charges the steps before they run (see :mod:`agent.dp.durable_accountant`).
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from protocols.errors import BadInputError


def make_dp_optimizer(
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_units: float,
    generator: torch.Generator | None = None,
    secure_mode: bool = False,
) -> DPOptimizer:
    """Wrap ``optimizer`` so that ``step()`` clips per unit, adds noise and averages.

    Raises
    ------
    BadInputError
        If a parameter is not positive.
    """
    if noise_multiplier < 0 or max_grad_norm <= 0 or expected_units <= 0:
        raise BadInputError(
            f"DP mechanism needs noise_multiplier >= 0, max_grad_norm > 0, expected_units > 0; got "
            f"{noise_multiplier}, {max_grad_norm}, {expected_units}"
        )
    return DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_units,
        loss_reduction="mean",
        generator=generator,
        secure_mode=secure_mode,
    )


def assign_unit_grads(module: nn.Module, unit_grads: dict[str, torch.Tensor]) -> None:
    """Set ``p.grad_sample`` of every trainable parameter of ``module`` from ``unit_grads``.

    Raises
    ------
    BadInputError
        If a trainable parameter has no per-unit gradient (it would silently escape clipping).
    """
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if name not in unit_grads:
            raise BadInputError(f"no per-unit gradient for parameter {name}; every trained parameter must be clipped")
        g = unit_grads[name]
        if tuple(g.shape[1:]) != tuple(p.shape):
            raise BadInputError(f"per-unit gradient of {name}: expected (*, {tuple(p.shape)}), got {tuple(g.shape)}")
        p.grad_sample = g.to(p.dtype)


def private_step(
    dp_optimizer: DPOptimizer, module: nn.Module, unit_grads: dict[str, torch.Tensor],
    public_grads: dict[str, torch.Tensor] | None = None,
) -> None:
    """One DP-SGD update of ``module`` from per-unit gradients (clip, sum, noise, average, step).

    ``public_grads`` (by parameter name) are added to the noised average before the step, unclipped
    and without noise. Only gradients of terms that hold no private data may go there: whatever is
    passed is released as it is, so it must not depend on the private batch (not even its size).
    """
    params = dict(module.named_parameters())
    unknown = sorted(set(public_grads or {}) - set(params))
    if unknown:
        raise BadInputError(f"public gradient for {unknown[0]!r}, which is not a parameter of the module")
    dp_optimizer.zero_grad(set_to_none=True)
    assign_unit_grads(module, unit_grads)
    if not dp_optimizer.pre_step():  # clip, sum, noise, average into p.grad
        return
    for name, g in (public_grads or {}).items():
        p = params[name]
        p.grad = g.to(p.dtype) if p.grad is None else p.grad + g.to(p.grad.dtype)
    dp_optimizer.original_optimizer.step()
