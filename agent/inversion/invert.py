"""Invert images into W+: iterative encoder refinement, then optional per-image latent optimisation.

The generator is frozen and run with ``noise_mode="const"`` so a W+ code alone determines the image
(k-SALSA averages and aligns these codes).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from agent.inversion.encoder import ReStyleEncoder
from agent.inversion.losses import ReconstructionLoss
from agent.stylegan.generator import Generator


def synthesize(G: Generator, ws: torch.Tensor) -> torch.Tensor:
    """Image of a W+ code with the generator's fixed noise."""
    return G.synthesis(ws, noise_mode="const")


def refine(encoder: ReStyleEncoder, G: Generator, targets: torch.Tensor, *, iterations: int,
           start: torch.Tensor | None = None) -> list[torch.Tensor]:
    """ReStyle iterations from the average latent; returns the W+ code after each iteration.

    ``ws_0`` is the generator's average latent (or ``start``); ``ws_{t+1} = ws_t + E(x, G(ws_t))``.
    Gradients flow through the last iteration only (earlier codes are detached, as in ReStyle).
    """
    if iterations < 1:
        raise ValueError(f"refine: iterations must be >= 1, got {iterations}")
    ws = G.mean_ws(targets.shape[0]).to(targets) if start is None else start
    current = synthesize(G, ws).detach()
    history = []
    for _ in range(iterations):
        ws = ws.detach() + encoder(targets, current)
        history.append(ws)
        current = synthesize(G, ws).detach()
    return history


@dataclasses.dataclass(frozen=True)
class OptimisationSettings:
    """Per-image latent optimisation (k-SALSA's schedule: Adam lr 0.1, 5 % warm-up, cosine last 25 %)."""

    steps: int = 100  # Adam steps per batch of images
    lr: float = 0.1  # peak learning rate on W+
    warmup: float = 0.05  # fraction of steps with linear ramp-up
    rampdown: float = 0.25  # fraction of steps with cosine ramp-down to 0


def learning_rate(step: int, s: OptimisationSettings) -> float:
    """Learning rate at ``step`` of the warm-up / constant / cosine ramp-down schedule."""
    t = step / max(s.steps, 1)
    ramp = min(1.0, (1.0 - t) / s.rampdown) if s.rampdown else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return s.lr * ramp * (min(1.0, t / s.warmup) if s.warmup else 1.0)


def optimise_latents(G: Generator, targets: torch.Tensor, start: torch.Tensor, loss_fn: ReconstructionLoss,
                     settings: OptimisationSettings) -> tuple[torch.Tensor, list[float]]:
    """Refine W+ codes for each image by gradient descent on the reconstruction loss.

    Returns the optimised codes (detached) and the mean loss before each step (for progress).
    """
    ws = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=settings.lr, betas=(0.9, 0.999))
    losses = []
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss = loss_fn(synthesize(G, ws), targets).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return ws.detach(), losses
