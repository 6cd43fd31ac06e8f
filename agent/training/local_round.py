"""The federation entry point: one site's local DP-GAN training round.

The Flower ClientApp (a thin adapter) calls :func:`run_local_round`; everything that protects the
site happens here, in the agent package the site installed, in this order:

1. the plan is validated against the site's own policy (task accepted, delta, privacy unit,
   minimum number of patients, target epsilon <= the site's max epsilon);
2. the noise multiplier is calibrated once for the plan's *total* steps over all rounds, so every
   round of a plan uses the same mechanism and the last round lands on the target;
3. the round's steps are *reserved* in the durable accountant (fsync'd) -- which refuses with
   :class:`~protocols.errors.BudgetExceededError` if the site's budget would be exceeded -- and only
   then does training start; a crash after this point can only over-count;
4. the result carries weights, DP-safe aggregate metrics and the mechanism parameters an auditor
   needs to recompute epsilon.

A round without DP (``target_epsilon=None``) needs ``gan-nodp`` in the site's accepted tasks, is
labelled epsilon = infinity, and is recorded in the accountant as an unbounded release of that
dataset: no DP round on the same dataset can claim a finite epsilon afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agent.config import SiteConfig
from agent.dp.accounting import AccountantKind, epsilon_of
from agent.dp.calibration_cache import cached_noise_multiplier, calibration_cache_path
from agent.dp.durable_accountant import DurableAccountant, accountant_path
from agent.dp.plan_policy import check_dp_plan, check_round_steps
from agent.models.architectures import GanSpec, parse_architecture
from agent.models.weights import initial_weights
from agent.training.gan_trainer import DPSettings, GanTrainer, Hyperparameters
from protocols.errors import BadInputError, TaskRefusedError
from protocols.tasks import PrivacyUnit, Task

if TYPE_CHECKING:  # the patching package is optional at import time
    from agent.patching.patches import PatchSet

log = logging.getLogger(__name__)

ACCOUNTANT_KIND = AccountantKind.PRV
NO_PRIVACY_LABEL = "no privacy guarantee (epsilon = infinity)"


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """What the coordinator asks of a site for one round (validated again at the site)."""

    architecture: str  # "wgan-gp" | "wgan-gp-sn" | "dcgan"
    patch_size: int
    local_steps: int  # critic iterations (= accountant steps) this round
    total_planned_steps: int  # over all rounds; noise is calibrated once for this total
    target_epsilon: float | None  # None means NO DP (epsilon = inf, labelled so)
    delta: float
    unit: PrivacyUnit
    expected_batch_patients: int  # sample_rate = expected_batch_patients / num_patients
    max_grad_norm: float
    seed: int


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What may leave the site after a round."""

    weights: dict[str, np.ndarray]  # keys "generator.<param>" and "critic.<param>" (float32)
    num_patients: int
    metrics: dict[str, float]  # aggregate only (losses, steps) -- never per-patient values
    mechanism: dict[str, float | int | str] | None  # None for a non-DP round
    epsilon_round: float  # epsilon of this round's steps alone (inf without DP)
    epsilon_cumulative: float  # the site's cumulative epsilon for this dataset after the round


@dataclasses.dataclass(frozen=True)
class BudgetStatus:
    """The site's spend for one dataset, for status displays and refusals."""

    epsilon_spent: float
    max_epsilon: float
    delta: float
    steps: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.max_epsilon - self.epsilon_spent)


def open_accountant(site: SiteConfig, dataset_id: str) -> DurableAccountant:
    """The durable accountant of ``dataset_id`` at ``site`` (accounted at the policy's delta)."""
    return DurableAccountant(
        accountant_path(site.state.accountant, dataset_id), kind=ACCOUNTANT_KIND, delta=site.privacy.delta
    )


def remaining_budget(site: SiteConfig, dataset_id: str) -> BudgetStatus:
    """Cumulative epsilon spent on ``dataset_id`` and what the site policy still allows."""
    acc = open_accountant(site, dataset_id)
    return BudgetStatus(acc.epsilon(), site.privacy.max_epsilon, acc.delta, acc.total_steps)


def current_epsilon(site: SiteConfig, dataset_id: str) -> float:
    """Cumulative epsilon spent on ``dataset_id`` (inf after a non-DP release)."""
    return open_accountant(site, dataset_id).epsilon()


def hyperparameters_for(architecture: str, *, dp: bool) -> Hyperparameters:
    """Defaults per family: DCGAN alternates 1:1; WGAN critics take 5 steps per generator step
    without DP and 2 with DP (each critic step costs privacy)."""
    if parse_architecture(architecture).uses_gradient_penalty:
        return Hyperparameters(n_critic=2 if dp else 5, critic_lr=2e-4, generator_lr=2e-4, beta1=0.5, beta2=0.9)
    return Hyperparameters(n_critic=1, critic_lr=2e-4, generator_lr=2e-4, beta1=0.5, beta2=0.999)


def check_plan_against_policy(site: SiteConfig, plan: RoundPlan, num_patients: int) -> None:
    """Refuse a plan the site's policy does not allow (see :func:`run_local_round` for the errors)."""
    if plan.target_epsilon is None:
        check_round_steps(plan)
        if Task.GAN_NODP not in site.privacy.accepted_tasks:
            raise TaskRefusedError(
                "round plan asks for training WITHOUT differential privacy (target_epsilon=None), but the "
                "site does not accept task 'gan-nodp'; add it to privacy.accepted_tasks only if the site agrees"
            )
        return
    check_dp_plan(site.privacy, Task.DPGAN, plan, num_patients)


def mechanism_for(
    plan: RoundPlan, *, num_patients: int, num_patches: int, hp: Hyperparameters, calibration_cache: Path | None = None
) -> DPSettings:
    """Noise multiplier and sample rate for ``plan`` (deterministic: the same in every round).

    ``calibration_cache`` is the site's on-disk cache of calibrations (see
    :mod:`agent.dp.calibration_cache`); ``None`` calibrates without it.
    """
    unit = PrivacyUnit(plan.unit)
    if unit is PrivacyUnit.PATIENT:
        expected = float(plan.expected_batch_patients)
        population = num_patients
    else:  # expected patches per step match the patient unit's: patients x patches per patient
        expected = float(plan.expected_batch_patients * hp.patches_per_patient)
        population = num_patches
    if expected > population:
        raise BadInputError(
            f"expected batch of {expected:g} {unit.value} units exceeds the {population} available; "
            "lower expected_batch_patients"
        )
    sample_rate = expected / population
    # Each Flower message runs in a fresh process, so the cache lives on disk, not in memory.
    sigma = cached_noise_multiplier(
        calibration_cache,
        target_epsilon=float(plan.target_epsilon),  # type: ignore[arg-type]
        delta=plan.delta,
        sample_rate=sample_rate,
        steps=plan.total_planned_steps,
        kind=ACCOUNTANT_KIND,
    )
    return DPSettings(sigma, plan.max_grad_norm, sample_rate, unit, expected)


def run_local_round(
    *,
    site: SiteConfig,
    dataset_id: str,
    patches: PatchSet,
    weights: dict[str, np.ndarray] | None,
    plan: RoundPlan,
    device: torch.device | None = None,
) -> RoundResult:
    """Train one local round under the site's policy and return what may be released.

    Raises
    ------
    TaskRefusedError
        If the site does not accept DP (or non-DP) GAN training.
    BudgetExceededError
        If the round would push the dataset's cumulative epsilon past ``privacy.max_epsilon``
        (checked and refused before any training; nothing is written).
    PolicyError
        If delta, privacy unit or patient count conflict with the site policy.
    BadInputError
        If the plan or the weights are inconsistent with the patches.
    """
    spec = GanSpec(parse_architecture(plan.architecture), plan.patch_size)
    images = np.asarray(patches.images)
    patient_index = np.asarray(patches.patient_index)
    num_patients = int(patches.num_patients)
    check_plan_against_policy(site, plan, num_patients)
    dp_on = plan.target_epsilon is not None
    hp = hyperparameters_for(plan.architecture, dp=dp_on)
    acc = open_accountant(site, dataset_id)
    label = f"{plan.architecture} seed {plan.seed}"
    if dp_on:
        mech = mechanism_for(
            plan, num_patients=num_patients, num_patches=images.shape[0], hp=hp,
            calibration_cache=calibration_cache_path(site.state.accountant),
        )
        # Write-ahead: the whole round is charged on disk before its first step.
        eps_cum = acc.reserve(
            noise_multiplier=mech.noise_multiplier,
            sample_rate=mech.sample_rate,
            steps=plan.local_steps,
            unit=mech.unit,
            max_epsilon=site.privacy.max_epsilon,
            label=label,
            max_grad_norm=mech.max_grad_norm,
            task=Task.DPGAN,
        )
        eps_round = epsilon_of([(mech.noise_multiplier, mech.sample_rate, plan.local_steps)], delta=acc.delta, kind=acc.kind)
    else:
        mech = None
        acc.record_non_private_release(steps=plan.local_steps, unit=PrivacyUnit(plan.unit), label=label)
        eps_cum = eps_round = math.inf
        log.warning("training WITHOUT differential privacy: %s", NO_PRIVACY_LABEL)
    start = weights if weights is not None else initial_weights(spec.architecture, spec.patch_size, plan.seed)
    trainer = GanTrainer(spec, images, patient_index, hp=hp, dp=mech, seed=plan.seed, weights=start, device=device)
    g_losses, c_losses = [], []
    for _ in range(plan.local_steps):
        out = trainer.train_iteration()
        if "generator_loss" in out:
            g_losses.append(out["generator_loss"])
        if "critic_loss" in out:
            c_losses.append(out["critic_loss"])
    metrics: dict[str, float] = {
        "critic_steps": float(trainer.critic_steps),
        "generator_steps": float(trainer.generator_steps),
    }
    if g_losses:  # generator loss uses only fakes and the released critic: DP post-processing
        metrics["generator_loss"] = float(np.mean(g_losses))
    if not dp_on and c_losses:  # the critic loss touches real data: released only without DP
        metrics["critic_loss"] = float(np.mean(c_losses))
    mechanism = None
    if mech is not None:
        mechanism = {
            "noise_multiplier": mech.noise_multiplier,
            "sample_rate": mech.sample_rate,
            "steps": plan.local_steps,
            "max_grad_norm": mech.max_grad_norm,
            "delta": acc.delta,
            "unit": mech.unit.value,
            "accountant": acc.kind.value,
        }
    log.info("round done: %d critic steps, epsilon round %.4g, cumulative %.4g", plan.local_steps, eps_round, eps_cum)
    return RoundResult(trainer.weights(), num_patients, metrics, mechanism, eps_round, eps_cum)
