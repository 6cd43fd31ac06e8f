"""One site's StyleGAN training round: ``federated-dp`` (accounted, releasable) or ``local`` (kept).

This is the one place that joins the StyleGAN trainer with the site's policy and its durable
accountant, in the same order as :func:`agent.training.local_round.run_local_round`:

1. the task must be in the site's accepted tasks (``stylegan-dp`` or ``stylegan-local``);
2. under DP the plan is checked against the policy (epsilon, delta, unit, minimum patients), the
   noise is calibrated once for the plan's total steps, and the round's discriminator steps are
   *reserved* in the durable accountant (fsync'd) before the first step runs;
3. a DP round returns float32 weights, DP-safe metrics (generator loss, step counts; never the
   discriminator loss, which is computed on real images) and the mechanism an auditor needs;
   a local round returns nothing that may leave: only the path of its ``site-only`` checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch

from agent.config import SiteConfig
from agent.dp.accounting import epsilon_of
from agent.dp.calibration_cache import cached_noise_multiplier, calibration_cache_path
from agent.dp.plan_policy import check_dp_plan
from agent.stylegan.config import PRESETS, StyleGANConfig, TrainingConfig, TrainingMode
from agent.stylegan.dp_step import DPSettings
from agent.stylegan.train import Progress, StyleGANTrainer
from agent.training.local_round import ACCOUNTANT_KIND, RoundResult, open_accountant
from protocols.errors import BadInputError, TaskRefusedError
from protocols.tasks import PrivacyUnit, Task

log = logging.getLogger(__name__)


#: StyleGAN configurations a federated round may name (``TrainInstruction.architecture``): the presets
#: of :mod:`agent.stylegan.config` with minibatch stddev off (it mixes patients, which per-patient
#: DP-SGD forbids), and ``tiny16`` (a few thousand parameters) for tests and quick checks on one core.
FEDERATED_ARCHITECTURES: dict[str, StyleGANConfig] = {
    "tiny16": StyleGANConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16,
                             mbstd_group_size=0),
    **{name: dataclasses.replace(cfg, mbstd_group_size=0) for name, cfg in PRESETS.items()},
}


def federated_architecture(name: str, *, resolution: int) -> StyleGANConfig:
    """The StyleGAN configuration a federated-dp round names, checked against the planned resolution.

    Raises
    ------
    BadInputError
        If the name is not a federated StyleGAN configuration or its resolution differs.
    """
    arch = FEDERATED_ARCHITECTURES.get(name)
    if arch is None:
        raise BadInputError(f"architecture {name!r} is not a StyleGAN configuration for stylegan-dp rounds; "
                            f"choose one of {sorted(FEDERATED_ARCHITECTURES)}")
    if arch.resolution != resolution:
        raise BadInputError(f"StyleGAN configuration {name!r} generates {arch.resolution} px images, the round "
                            f"plan says {resolution} px; set patch-size to {arch.resolution}")
    return arch


def release_arrays_spec(arch: StyleGANConfig) -> dict[str, np.ndarray]:
    """Arrays with exactly the names, shapes and dtypes a federated-dp round releases (a fresh init)."""
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0)  # not used: no step is taken
    return StyleGANTrainer(arch, TrainingConfig(), mode=TrainingMode.FEDERATED_DP, seed=0, dp=dp).to_arrays()


@dataclasses.dataclass(frozen=True)
class StyleGANRoundPlan:
    """What a coordinator asks of a site for one federated-dp StyleGAN round."""

    local_steps: int  # discriminator steps (= accountant steps) this round
    total_planned_steps: int  # over all rounds; noise is calibrated once for this total
    target_epsilon: float  # epsilon after total_planned_steps
    delta: float
    unit: PrivacyUnit
    expected_batch_patients: int  # sample_rate = expected_batch_patients / num_patients
    max_grad_norm: float
    seed: int  # weight init, latents, augmentation (never DP noise or sampling)


def run_stylegan_dp_round(*, site: SiteConfig, dataset_id: str, images: torch.Tensor, patient_index: torch.Tensor,
                          weights: dict[str, np.ndarray] | None, plan: StyleGANRoundPlan, arch: StyleGANConfig,
                          train: TrainingConfig, images_per_patient: int = 4,
                          device: str | torch.device = "cpu") -> RoundResult:
    """Train one federated-dp round and return what may be released.

    Raises
    ------
    TaskRefusedError, BudgetExceededError, PolicyError
        If the site's policy or remaining budget refuses the round (nothing is trained or written).
    BadInputError
        If the plan or the weights do not fit the data or the architecture.
    """
    num_patients = int(patient_index.max()) + 1
    check_dp_plan(site.privacy, Task.STYLEGAN_DP, plan, num_patients)
    unit = PrivacyUnit(plan.unit)
    population = num_patients if unit is PrivacyUnit.PATIENT else images.shape[0]
    expected = plan.expected_batch_patients * (1 if unit is PrivacyUnit.PATIENT else images_per_patient)
    sample_rate = min(1.0, expected / population)
    # Each Flower message runs in a fresh process: the site's on-disk cache spares the ~20 s search.
    sigma = cached_noise_multiplier(calibration_cache_path(site.state.accountant), target_epsilon=plan.target_epsilon,
                                    delta=plan.delta, sample_rate=sample_rate, steps=plan.total_planned_steps,
                                    kind=ACCOUNTANT_KIND)
    dp = DPSettings(noise_multiplier=sigma, max_grad_norm=plan.max_grad_norm, sample_rate=sample_rate, unit=unit,
                    images_per_patient=images_per_patient)
    trainer = StyleGANTrainer(arch, train, mode=TrainingMode.FEDERATED_DP, seed=plan.seed, dp=dp, device=device)
    if weights is not None:
        trainer.load_arrays(weights)  # checked before anything is charged
    acc = open_accountant(site, dataset_id)
    eps_cum = acc.reserve(noise_multiplier=sigma, sample_rate=sample_rate, steps=plan.local_steps, unit=unit,
                          max_epsilon=site.privacy.max_epsilon, label=f"stylegan seed {plan.seed}",
                          max_grad_norm=plan.max_grad_norm, task=Task.STYLEGAN_DP)
    eps_round = epsilon_of([(sigma, sample_rate, plan.local_steps)], delta=acc.delta, kind=acc.kind)
    g_losses: list[float] = []
    trainer.fit(images, patient_index, steps=plan.local_steps, progress=lambda _, m: g_losses.append(m["g_loss"]))
    metrics = {"discriminator_steps": float(plan.local_steps), "generator_steps": float(plan.local_steps),
               "generator_loss": float(np.mean(g_losses)) if g_losses else math.nan}
    mechanism = {"noise_multiplier": sigma, "sample_rate": sample_rate, "steps": plan.local_steps,
                 "max_grad_norm": plan.max_grad_norm, "delta": acc.delta, "unit": unit.value,
                 "accountant": acc.kind.value}
    log.info("stylegan dp round: %d steps, epsilon round %.4g, cumulative %.4g", plan.local_steps, eps_round, eps_cum)
    return RoundResult(trainer.to_arrays(), num_patients, metrics, mechanism, eps_round, eps_cum)


def run_stylegan_local(*, site: SiteConfig, images: torch.Tensor, patient_index: torch.Tensor, steps: int,
                       arch: StyleGANConfig, train: TrainingConfig, seed: int, checkpoint: Path,
                       device: str | torch.device = "cpu", checkpoint_every: int = 100,
                       progress: Progress | None = None) -> Path:
    """Train (or resume) a ``local`` StyleGAN; its weights stay at the site in ``checkpoint``.

    Raises
    ------
    TaskRefusedError
        If the site does not accept task ``stylegan-local``.
    """
    if Task.STYLEGAN_LOCAL not in site.privacy.accepted_tasks:
        raise TaskRefusedError("the site does not accept task 'stylegan-local'; add it to privacy.accepted_tasks")
    trainer = StyleGANTrainer(arch, train, mode=TrainingMode.LOCAL, seed=seed, device=device)
    if Path(checkpoint).exists():
        trainer.load(Path(checkpoint))
        log.info("resuming local StyleGAN at step %d", trainer.step_count)
    if progress is not None:
        progress(trainer.step_count, {})  # where a resumed run starts
    trainer.fit(images, patient_index, steps=steps, checkpoint_path=Path(checkpoint), checkpoint_every=checkpoint_every,
                progress=progress)
    return Path(checkpoint)
