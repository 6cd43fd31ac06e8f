"""Exact per-sample gradients of the whole critic loss, gradient penalty and spectral norm included.

Two engines, tested equal to each other and to a one-sample-at-a-time loop:

* :func:`reference_per_sample_grads` -- generic: ``torch.func.vmap(grad_and_value(loss))`` over
  ``functional_call``; the penalty's inner gradient is ``torch.func.grad`` w.r.t. the interpolate.
  Works for any critic without cross-sample layers, but a vmapped double backward turns every conv
  into a grouped conv (about 12x a non-DP step on this CPU).
* :func:`fast_per_sample_grads` -- for :class:`~agent.models.critics.ConvCritic` (conv + LeakyReLU
  + linear). It writes the input-gradient pass ``grad_x D`` out explicitly (transposed convs through
  fixed LeakyReLU masks), so the penalty becomes a first-order graph in which each weight is used
  twice: forward ``z = conv(a, W)`` and backward ``dh = conv_T(dz, W)``. The per-sample gradient of
  a weight is then a sum of per-sample outer products, one for each use (``dL/dz x a`` and
  ``dz x dL/d(dh)``), computed as one batched matmul per layer with the real, fake and penalty
  uses of a sample concatenated along the position axis. Everything is computed without autograd.

Spectral norm: both engines hold the power-iteration vectors fixed (they are buffers), so
``W_sn = W / (u^T W v)`` and ``dL/dW = G / sigma - <G, W> / sigma^2 * u v^T`` for ``G = dL/dW_sn``.

Per-unit (patient) gradients are sums of a unit's per-sample gradients (:func:`sum_per_unit`);
the fast engine sums layer by layer so only one layer's per-sample tensor is alive at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value, vmap

from agent.dp.critic_loss import (
    CriticObjective,
    fake_terms,
    penalty_from_gradient,
    penalty_points,
    real_terms,
    GP_NORM_EPS,
)
from agent.models.critics import LEAKY_SLOPE, ConvCritic
from protocols.errors import BadInputError

Grads = dict[str, torch.Tensor]


def sum_per_unit(per_sample: torch.Tensor, unit_index: torch.Tensor | None, num_units: int | None) -> torch.Tensor:
    """Sum rows of ``per_sample`` that belong to the same unit (``unit_index`` in ``[0, num_units)``)."""
    if unit_index is None:
        return per_sample
    out = per_sample.new_zeros((num_units, *per_sample.shape[1:]))
    return out.index_add_(0, unit_index, per_sample)


# -- generic reference engine -------------------------------------------------------------------
def reference_per_sample_grads(
    critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor,
    objective: CriticObjective,
    *,
    unit_index: torch.Tensor | None = None,
    num_units: int | None = None,
    fake_term: bool = True,
    penalty: bool = True,
) -> tuple[Grads, torch.Tensor]:
    """Per-sample (or per-unit) gradients of the critic loss w.r.t. every trainable parameter.

    With ``fake_term=False`` the loss leaves out the term that scores the paired fake alone (it
    holds no private data, so a DP step may take its gradient outside clipping and noise, see
    :class:`~agent.training.gan_trainer.Hyperparameters`); the fake still enters the penalty's
    interpolate. A penalty evaluated on the fakes (``objective.penalty_at == "fakes"``) holds no
    private data either and is left out with the fake term. ``penalty=False`` leaves the penalty out
    and keeps the fake term (a DP step may then add the penalty on the fakes outside clipping and
    noise: ``Hyperparameters.public_penalty``); only a penalty on the fakes may be left out.

    Returns
    -------
    grads, losses
        ``grads[name]`` has shape ``(N or num_units, *param.shape)``; ``losses`` is ``(N,)``.
    """
    params = {k: v.detach() for k, v in critic.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in critic.named_buffers()}
    with_penalty = _penalty_in_per_sample_loss(objective, fake_term, penalty)

    def score(p: Grads, x: torch.Tensor) -> torch.Tensor:
        return functional_call(critic, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    def sample_loss(p: Grads, r: torch.Tensor, f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        loss = real_terms(score(p, r), objective)
        if fake_term:
            loss = loss + fake_terms(score(p, f), objective)
        if with_penalty:
            x_hat = f if objective.penalty_at == "fakes" else a * r + (1 - a) * f
            g = grad(lambda x: score(p, x))(x_hat)
            loss = loss + objective.gp_weight * (torch.sqrt(g.pow(2).sum() + GP_NORM_EPS) - 1) ** 2
        return loss

    grads, losses = vmap(grad_and_value(sample_loss), in_dims=(None, 0, 0, 0))(params, real, fake, alpha)
    return {k: sum_per_unit(g, unit_index, num_units) for k, g in grads.items()}, losses


def _penalty_in_per_sample_loss(objective: CriticObjective, fake_term: bool, penalty: bool) -> bool:
    # A penalty on the fakes alone goes with the fake term: outside when the fake term is left out,
    # or on its own (penalty=False). A penalty on the interpolates holds private data: never left out.
    if not penalty and objective.gradient_penalty and not objective.penalty_is_public:
        raise BadInputError("only a penalty on the fakes may be left out of the per-sample loss (penalty_at='fakes')")
    return objective.gradient_penalty and penalty and (fake_term or not objective.penalty_is_public)


# -- fast engine for ConvCritic -----------------------------------------------------------------
def _per_sample_conv_weight_grad(outs: torch.Tensor, ins: torch.Tensor, uses: int, kernel: int) -> torch.Tensor:
    """Per-sample ``sum_p outs[o, p] * unfold(ins)[k, p]`` with ``uses`` rows per sample stacked use-major.

    ``outs``: (uses*B, C_out, H', W'); ``ins``: (uses*B, C_in, H, W). Returns (B, C_out, C_in*k*k).
    """
    n = outs.shape[0]
    b = n // uses
    cols = F.unfold(ins, kernel, padding=1, stride=2)  # (n, C_in*k*k, P)
    g = outs.flatten(2)  # (n, C_out, P)
    if uses > 1:  # put a sample's uses side by side along the position axis: one matmul per sample
        cols = cols.view(uses, b, *cols.shape[1:]).permute(1, 2, 0, 3).reshape(b, cols.shape[1], -1)
        g = g.view(uses, b, *g.shape[1:]).permute(1, 2, 0, 3).reshape(b, g.shape[1], -1)
    return torch.bmm(g, cols.transpose(1, 2))


def _spectral_correction(critic: ConvCritic, index: int, g_eff: torch.Tensor) -> torch.Tensor:
    """Map per-sample gradients w.r.t. ``W / sigma`` to gradients w.r.t. the raw ``W`` (u, v fixed)."""
    weight = critic.weighted_layers()[index].weight.detach()
    u = getattr(critic, f"sn_u{index}")
    v = getattr(critic, f"sn_v{index}")
    w2 = weight.reshape(weight.shape[0], -1)
    sigma = torch.dot(u, w2 @ v)
    g2 = g_eff.reshape(g_eff.shape[0], *w2.shape)
    inner = torch.einsum("bij,ij->b", g2, w2)
    out = g2 / sigma - (inner / sigma**2).view(-1, 1, 1) * torch.outer(u, v).unsqueeze(0)
    return out.reshape(g_eff.shape)


@torch.no_grad()
def fast_per_sample_grads(
    critic: ConvCritic,
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor,
    objective: CriticObjective,
    *,
    unit_index: torch.Tensor | None = None,
    num_units: int | None = None,
    fake_term: bool = True,
    penalty: bool = True,
) -> tuple[Grads, torch.Tensor]:
    """Same contract as :func:`reference_per_sample_grads`, for :class:`ConvCritic` only."""
    if not isinstance(critic, ConvCritic):
        raise TypeError(f"fast_per_sample_grads needs a ConvCritic, got {type(critic).__name__}")
    b = real.shape[0]
    n_conv = len(critic.convs)
    weights = [critic.effective_weight(i).detach() for i in range(n_conv + 1)]
    biases = [c.bias.detach() for c in critic.convs]
    wasserstein = objective.gradient_penalty  # the loss form; whether the penalty is in this loss:
    gp = _penalty_in_per_sample_loss(objective, fake_term, penalty)
    # Row blocks of B rows each: the scored ones (real, and the paired fake unless it is left out),
    # then the penalty points (interpolates or fakes). ``n_adv`` is the number of scored blocks.
    scored = [real, fake] if fake_term else [real]
    n_adv = len(scored)
    rows = scored + ([penalty_points(real, fake, alpha, objective)] if gp else [])
    uses = len(rows)
    x = torch.cat(rows)

    # Forward for all rows (the interpolates' activations give the LeakyReLU masks of grad_x D).
    acts, masks = [x], []
    h = x
    for i in range(n_conv):
        z = F.conv2d(h, weights[i], biases[i], stride=2, padding=1)
        m = torch.where(z > 0, 1.0, LEAKY_SLOPE).to(z.dtype)
        h = z * m
        acts.append(h)
        masks.append(m)
    head_w = weights[n_conv]
    d = h.flatten(1) @ head_w.t()
    d = d.squeeze(1) + critic.head.bias.detach()
    d_real = d[:b]
    losses = real_terms(d_real, objective)
    if wasserstein:
        seeds = [-torch.ones_like(d_real)]
    else:
        seeds = [-torch.sigmoid(-d_real)]  # dL/dD for the logistic loss
    if fake_term:
        d_fake = d[b : 2 * b]
        losses = losses + fake_terms(d_fake, objective)
        seeds.append(torch.ones_like(d_fake) if wasserstein else torch.sigmoid(d_fake))
    if gp:
        seeds.append(torch.ones_like(d_real))  # penalty points: grad_x D is the gradient of D itself
    seed = torch.cat(seeds)
    g0 = n_adv * b  # first interpolate row

    # Backward of D for all rows: dL/dz for scored rows, grad_x D's chain (dz, dh) for interpolates.
    delta = seed.view(-1, 1, 1, 1) * head_w.view(1, *acts[-1].shape[1:])
    dzs: list[torch.Tensor] = [None] * n_conv  # type: ignore[list-item]
    for i in reversed(range(n_conv)):
        dzs[i] = delta * masks[i]
        if i > 0:
            delta = F.conv_transpose2d(dzs[i], weights[i], stride=2, padding=1)
        elif gp:
            delta = F.conv_transpose2d(dzs[i][g0:], weights[i], stride=2, padding=1)

    # Penalty: reverse pass through the explicit input-gradient graph (G_l = dL/d(dh_l)).
    g_in: list[torch.Tensor] = []
    if gp:
        grad_x = delta
        losses = losses + penalty_from_gradient(grad_x, objective.gp_weight)
        norm = torch.sqrt(grad_x.flatten(1).pow(2).sum(1) + GP_NORM_EPS)
        g = (2 * objective.gp_weight * (norm - 1) / norm).view(-1, 1, 1, 1) * grad_x
        for i in range(n_conv):
            g_in.append(g)
            g = F.conv2d(g, weights[i], stride=2, padding=1) * masks[i][g0:]
        g_head_gp = g  # dL/d(dh_L): the head weight's use in grad_x D

    def per_sample_sum(t: torch.Tensor) -> torch.Tensor:
        """Sum the scored blocks of ``t`` (n_adv*B, ...) sample by sample: (B, ...)."""
        return t.view(n_adv, b, *t.shape[1:]).sum(0)

    grads: Grads = {}
    for i, conv in enumerate(critic.convs):
        ins = torch.cat([acts[i][:g0], g_in[i]]) if gp else acts[i]
        gw = _per_sample_conv_weight_grad(dzs[i], ins, uses, conv.kernel_size[0])
        gw = gw.view(b, *conv.weight.shape)
        if critic.spectral_norm:
            gw = _spectral_correction(critic, i, gw)
        grads[f"convs.{i}.weight"] = sum_per_unit(gw, unit_index, num_units)
        gb = per_sample_sum(dzs[i][:g0].sum((2, 3)))
        grads[f"convs.{i}.bias"] = sum_per_unit(gb, unit_index, num_units)
    flat = acts[-1].flatten(1)
    gh = per_sample_sum(seed[:g0, None] * flat[:g0])
    if gp:
        gh = gh + g_head_gp.flatten(1)
    gh = gh.view(b, *critic.head.weight.shape)
    if critic.spectral_norm:
        gh = _spectral_correction(critic, n_conv, gh)
    grads["head.weight"] = sum_per_unit(gh, unit_index, num_units)
    grads["head.bias"] = sum_per_unit(per_sample_sum(seed[:g0]).view(b, 1), unit_index, num_units)
    return grads, losses
