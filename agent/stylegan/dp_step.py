"""DP-SGD for the StyleGAN discriminator (``federated-dp`` mode), on agent.dp's mechanism.

This module only adapts StyleGAN to the shared DP layers: Poisson sampling of units
(:class:`agent.dp.sampling.UnitSampler`), per-unit sums (:func:`agent.dp.per_sample_grads.sum_per_unit`)
and the Gaussian mechanism through Opacus (:mod:`agent.dp.mechanism`). What is StyleGAN-specific is
the per-sample loss with R1 (:mod:`agent.stylegan.per_sample`). Accounting happens elsewhere: the
caller reserves the steps in the site's durable accountant before training.

As in :mod:`agent.training.gan_trainer`, the randomness DP relies on (which patients are drawn, the
Gaussian noise) comes from ``os.urandom`` and never from the run's seed: a party that knows the
noise could subtract it, and one that knows the batch loses the amplification by sampling.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from torch import nn

from agent.dp.mechanism import make_dp_optimizer, private_step
from agent.dp.per_sample_grads import sum_per_unit
from agent.dp.sampling import UnitBatch, UnitSampler
from agent.stylegan.per_sample import per_sample_discriminator_grads
from protocols.errors import ConfigError
from protocols.tasks import PrivacyUnit


@dataclasses.dataclass(frozen=True)
class DPSettings:
    """DP-SGD parameters of the discriminator (recorded in the ledger with every spend)."""

    noise_multiplier: float  # sigma: noise std = sigma * max_grad_norm per coordinate
    max_grad_norm: float  # clip bound C of one unit's (patient's) summed gradient
    sample_rate: float  # probability q that a unit is in a step (Poisson sampling)
    unit: PrivacyUnit = PrivacyUnit.PATIENT  # what one DP record is
    images_per_patient: int = 4  # compute cap: at most this many of a drawn patient's images per step

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0 or not 0 < self.sample_rate <= 1:
            raise ConfigError(
                f"dp: need noise_multiplier >= 0, max_grad_norm > 0, 0 < sample_rate <= 1; got "
                f"{self.noise_multiplier}, {self.max_grad_norm}, {self.sample_rate}"
            )
        if self.images_per_patient < 1:
            raise ConfigError(f"dp.images_per_patient: expected >= 1, got {self.images_per_patient}")


def secret_generator() -> torch.Generator:
    """A CPU generator seeded from the OS, for the randomness the DP guarantee rests on."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))


def make_sampler(patient_index: torch.Tensor, settings: DPSettings) -> UnitSampler:
    """Poisson sampler of patients (or images) with OS randomness."""
    return UnitSampler(patient_index.cpu().numpy().astype(np.int64), unit=settings.unit,
                       sample_rate=settings.sample_rate, patches_per_patient=settings.images_per_patient,
                       generator=secret_generator())


def make_private_optimizer(optimizer: torch.optim.Optimizer, settings: DPSettings, *, population: int) -> torch.optim.Optimizer:
    """Wrap the discriminator's optimiser in the clip-sum-noise-average mechanism (OS-random noise)."""
    return make_dp_optimizer(optimizer, noise_multiplier=settings.noise_multiplier,
                             max_grad_norm=settings.max_grad_norm, expected_units=settings.sample_rate * population,
                             generator=secret_generator())


def unit_discriminator_grads(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: UnitBatch, *,
                             r1_gamma: float) -> tuple[dict[str, torch.Tensor], float]:
    """Per-unit gradients (sum of each unit's per-sample gradients, R1 included); (grads, mean loss).

    An empty Poisson draw gives zero-row gradients: the step is then pure noise, as the analysis
    assumes. The loss is computed on private data and is for the local log only.
    """
    if real.shape[0] == 0:
        return {k: p.new_zeros((0, *p.shape)) for k, p in discriminator.named_parameters()}, float("nan")
    grads, losses = per_sample_discriminator_grads(discriminator, real, fake, r1_gamma=r1_gamma)
    unit_index = batch.unit_index.to(real.device)
    return {k: sum_per_unit(g, unit_index, batch.num_units) for k, g in grads.items()}, float(losses.mean())


__all__ = ["DPSettings", "make_private_optimizer", "make_sampler", "private_step", "unit_discriminator_grads"]
