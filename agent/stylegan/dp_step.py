"""One DP-SGD discriminator step at the patient level (``federated-dp`` mode).

Mechanism only (sample, per-sample gradients, per-patient clip, Gaussian noise); accounting is the
site accountant's job. Privacy unit = patient: each patient is drawn independently with
probability ``sample_rate`` (Poisson sampling of patients, not images), the gradients of all of a
drawn patient's images are summed, and that per-patient sum is clipped to ``max_grad_norm``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from agent.stylegan.per_sample import per_sample_discriminator_grads
from protocols.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DPSettings:
    """DP-SGD parameters of the discriminator (recorded in the ledger with every spend)."""

    noise_multiplier: float  # sigma: noise std = sigma * max_grad_norm
    max_grad_norm: float  # clip bound C of one patient's summed gradient
    sample_rate: float  # probability that a patient is in a step (Poisson)
    max_images_per_patient: int = 4  # compute cap: at most this many of a drawn patient's images

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0 or not 0 < self.sample_rate <= 1:
            raise ConfigError(
                f"dp: need noise_multiplier >= 0, max_grad_norm > 0, 0 < sample_rate <= 1; got "
                f"{self.noise_multiplier}, {self.max_grad_norm}, {self.sample_rate}"
            )
        if self.max_images_per_patient < 1:
            raise ConfigError(f"dp.max_images_per_patient: expected >= 1, got {self.max_images_per_patient}")


def poisson_patient_batch(patient_index: torch.Tensor, *, sample_rate: float, max_images_per_patient: int,
                          generator: torch.Generator) -> torch.Tensor:
    """Indices of the images of a Poisson sample of patients (possibly empty).

    Each patient is drawn independently with ``sample_rate``; of a drawn patient, a random subset of
    at most ``max_images_per_patient`` images is used (a choice that depends on that patient only).
    """
    n_patients = int(patient_index.max()) + 1 if patient_index.numel() else 0
    drawn = torch.nonzero(torch.rand(n_patients, generator=generator) < sample_rate).flatten()
    chosen = []
    for pid in drawn.tolist():
        own = torch.nonzero(patient_index == pid).flatten()
        order = torch.randperm(own.numel(), generator=generator)[:max_images_per_patient]
        chosen.append(own[order])
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)


def clip_and_noise_per_patient(grads: dict[str, torch.Tensor], patient_of_sample: torch.Tensor, *,
                               max_grad_norm: float, noise_multiplier: float, expected_patients: float,
                               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Sum per-sample gradients per patient, clip each patient's sum, add noise, average.

    Returns the noisy mean gradient: (sum_p clip(g_p) + N(0, (sigma C)^2)) / expected_patients.
    Dividing by the *expected* number of patients (not the drawn one) keeps the sensitivity fixed.
    """
    _, inverse = torch.unique(patient_of_sample, return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.numel() else 0
    per_patient = {}
    for name, g in grads.items():
        summed = torch.zeros((n, *g.shape[1:]), dtype=g.dtype, device=g.device)
        per_patient[name] = summed.index_add_(0, inverse.to(g.device), g)
    if n:
        norms = torch.sqrt(sum(g.flatten(1).square().sum(dim=1) for g in per_patient.values()))
        factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for name, g in per_patient.items():
        total = (g * factor.view(-1, *[1] * (g.ndim - 1))).sum(dim=0) if n else torch.zeros(g.shape[1:], dtype=g.dtype)
        noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * (noise_multiplier * max_grad_norm)
        out[name] = (total + noise.to(total.device)) / expected_patients
    return out


def dp_discriminator_grads(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                           patient_of_sample: torch.Tensor, settings: DPSettings, *, r1_gamma: float,
                           n_patients: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
    """Private gradient of the discriminator loss (incl. R1) for one step; returns (grads, mean loss)."""
    expected = settings.sample_rate * n_patients
    if real.shape[0] == 0:
        # An empty Poisson draw still releases a noisy (pure-noise) step, as the analysis assumes.
        zero = {k: torch.zeros((0, *p.shape), dtype=p.dtype) for k, p in discriminator.named_parameters()}
        return clip_and_noise_per_patient(zero, torch.zeros(0, dtype=torch.long), max_grad_norm=settings.max_grad_norm,
                                          noise_multiplier=settings.noise_multiplier, expected_patients=expected,
                                          generator=generator), float("nan")
    grads, losses = per_sample_discriminator_grads(discriminator, real, fake, r1_gamma=r1_gamma)
    private = clip_and_noise_per_patient(grads, patient_of_sample, max_grad_norm=settings.max_grad_norm,
                                         noise_multiplier=settings.noise_multiplier, expected_patients=expected,
                                         generator=generator)
    return private, float(losses.mean())
