"""The critic's per-sample loss, shared by the DP and non-DP training paths.

For a real patch ``x``, its paired fake ``x~`` and an interpolation weight ``a`` (uniform in [0, 1]):

* WGAN-GP: ``D(x~) - D(x) + lambda * (||grad_x D(x^)|| - 1)^2`` with ``x^ = a x + (1 - a) x~``
  (Gulrajani et al. 2017), lambda = 10 by default;
* DCGAN: ``softplus(-D(x)) + softplus(D(x~))`` (non-saturating GAN loss on logits).

``penalty_at="fakes"`` moves the penalty from the interpolates to the fakes themselves (``x^ = x~``,
a one-sided variant in the spirit of R2): then nothing in the penalty touches private data, and a
DP step can take it outside DP-SGD together with the fake term, or alone while the fake term stays
in each unit's clipped gradient (see ``public_fake_losses``).

Real and fake terms sit in ONE per-sample loss, so a DP step charges the accountant once per
critic iteration (the seed code charged real and fake batches separately). The gradient norm uses
``sqrt(sum g^2 + GP_NORM_EPS)`` so the penalty stays differentiable at g = 0; every path below uses
the same formula so their results agree to rounding.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from protocols.errors import BadInputError

GP_NORM_EPS = 1e-12
PENALTY_POINTS = ("interpolates", "fakes")  # where the gradient penalty is evaluated


@dataclasses.dataclass(frozen=True)
class CriticObjective:
    """Which critic loss to use and its penalty weight."""

    gradient_penalty: bool  # True: Wasserstein loss + GP (WGAN-GP[-SN]); False: DCGAN logistic loss
    gp_weight: float = 10.0
    penalty_at: str = "interpolates"  # or "fakes": the penalty then holds no private data

    def __post_init__(self) -> None:
        if self.penalty_at not in PENALTY_POINTS:
            raise BadInputError(f"penalty_at: expected one of {PENALTY_POINTS}, got {self.penalty_at!r}")

    @property
    def penalty_is_public(self) -> bool:
        """True when the penalty is evaluated on fakes only (no real data in it)."""
        return self.gradient_penalty and self.penalty_at == "fakes"


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha * real + (1 - alpha) * fake`` with one alpha per sample."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    return a * real + (1 - a) * fake


def penalty_points(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor, objective: CriticObjective) -> torch.Tensor:
    """Where the penalty is evaluated: the interpolates, or the fakes (``penalty_at="fakes"``)."""
    return fake if objective.penalty_at == "fakes" else interpolate(real, fake, alpha)


def real_terms(d_real: torch.Tensor, objective: CriticObjective) -> torch.Tensor:
    """The part of the adversarial loss that scores real patches (``-D(x)`` or ``softplus(-D(x))``)."""
    return -d_real if objective.gradient_penalty else F.softplus(-d_real)


def fake_terms(d_fake: torch.Tensor, objective: CriticObjective) -> torch.Tensor:
    """The part that scores generated patches (``D(x~)`` or ``softplus(D(x~))``): no private data in it."""
    return d_fake if objective.gradient_penalty else F.softplus(d_fake)


def adversarial_terms(d_real: torch.Tensor, d_fake: torch.Tensor, objective: CriticObjective) -> torch.Tensor:
    """Per-sample critic loss without the penalty, from critic scores."""
    return real_terms(d_real, objective) + fake_terms(d_fake, objective)


def penalty_from_gradient(grad_x: torch.Tensor, gp_weight: float) -> torch.Tensor:
    """``gp_weight * (||g|| - 1)^2`` per sample for input gradients ``(N, ...)``."""
    norm = torch.sqrt(grad_x.flatten(1).pow(2).sum(1) + GP_NORM_EPS)
    return gp_weight * (norm - 1) ** 2


def batch_critic_losses(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor, objective: CriticObjective
) -> torch.Tensor:
    """Per-sample losses ``(N,)`` with an autograd graph (create_graph for the penalty): the non-DP path."""
    loss = adversarial_terms(critic(real), critic(fake), objective)
    if objective.gradient_penalty:
        loss = loss + _penalty(critic, penalty_points(real, fake, alpha, objective), objective)
    return loss


def public_fake_losses(
    critic: nn.Module, fake: torch.Tensor, objective: CriticObjective, *, fake_term: bool = True
) -> torch.Tensor:
    """Per-sample terms ``(N,)`` that hold no private data: the fake term, plus the penalty when it is
    evaluated on the fakes (``penalty_at="fakes"``). With an autograd graph.

    ``fake_term=False`` leaves the fake term out: the penalty on the fakes alone (a "public
    penalty"), which needs ``penalty_at="fakes"``.
    """
    if not fake_term and not objective.penalty_is_public:
        raise BadInputError("without the fake term the public part is the penalty on the fakes: it needs penalty_at='fakes'")
    loss = fake_terms(critic(fake), objective) if fake_term else fake.new_zeros(fake.shape[0])
    if objective.penalty_is_public:
        loss = loss + _penalty(critic, fake, objective)
    return loss


def _penalty(critic: nn.Module, points: torch.Tensor, objective: CriticObjective) -> torch.Tensor:
    x_hat = points.detach().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return penalty_from_gradient(grad_x, objective.gp_weight)
