"""The seam between the request handlers and the site's training code.

Handlers talk to a :class:`TrainingEngine`; the real ones load the site's data through ingest,
train, and read the site's durable accountant: :mod:`agent.site_service.dpgan_engine` (``dpgan``:
TOF patches) and :mod:`agent.site_service.stylegan_engine` (``stylegan-dp``: fundus photographs);
:func:`engine_for_task` picks one. Tests substitute their own engine to exercise policy, refusal
and guard logic without training a GAN.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import numpy as np

from agent.config import SiteConfig
from agent.site_service.policy import RoundTerms
from protocols.messages import TrainInstruction
from protocols.tasks import Task


@dataclasses.dataclass(frozen=True)
class LocalData:
    """A site's training data for one round; never leaves the site."""

    patches: Any  # engine-specific (a PatchSet for the DP-GAN engine)
    num_patients: int
    real_images: np.ndarray  # (N, S, S) image channel of the real patches: for the guard's copy check
    patient_keys: frozenset[str]  # for the guard's identifier check


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    """What a local round produced (mirrors the DP-GAN engine's RoundResult)."""

    weights: Mapping[str, np.ndarray]
    num_patients: int
    metrics: Mapping[str, float]
    mechanism: Mapping[str, Any] | None
    epsilon_round: float
    epsilon_cumulative: float
    epsilon_next: float | None = None  # cumulative after one more identical round (for scheduling)

    @classmethod
    def of(cls, result: Any, *, site: SiteConfig, dataset_id: str) -> "RoundOutcome":
        """The outcome of a finished local round (any engine's result with these fields), plus the
        scheduling estimate from the site's accountant."""
        return cls(
            weights=result.weights, num_patients=result.num_patients, metrics=result.metrics,
            mechanism=result.mechanism, epsilon_round=result.epsilon_round, epsilon_cumulative=result.epsilon_cumulative,
            epsilon_next=epsilon_after_next_round(site, dataset_id, result.mechanism),
        )


def dp_plan_fields(instruction: TrainInstruction, terms: RoundTerms, *, num_patients: int) -> dict[str, Any]:
    """The fields every engine's DP round plan takes from one train instruction and the site's terms.

    The privacy terms are the site's (``terms``: the stricter of policy and proposal), never the
    instruction's; the expected batch is capped at the patients the site holds.
    """
    return dict(
        local_steps=instruction.local_steps,
        total_planned_steps=instruction.total_planned_steps,
        target_epsilon=terms.target_epsilon,
        delta=terms.delta,
        unit=terms.unit,
        expected_batch_patients=min(instruction.expected_batch_patients, num_patients),
        max_grad_norm=instruction.max_grad_norm,
        seed=instruction.seed,
    )


class TrainingEngine(Protocol):
    """What the handlers need from the site's training code."""

    def epsilon_spent(self, site: SiteConfig, *, dataset_id: str) -> float:
        """Cumulative epsilon in the site's durable accountant for ``dataset_id`` (0 if none)."""

    def load_data(self, site: SiteConfig, *, dataset_id: str, patch_size: int, per_volume: int, seed: int) -> LocalData:
        """The site's patches for one round."""

    def train(
        self,
        site: SiteConfig,
        *,
        data: LocalData,
        weights: Mapping[str, np.ndarray] | None,
        instruction: TrainInstruction,
        terms: RoundTerms,
    ) -> RoundOutcome:
        """One local round; records the privacy spend durably before returning."""

    def reference_weights(self, *, architecture: str, patch_size: int) -> dict[str, np.ndarray]:
        """Weights with the planned names, shapes and dtypes (values irrelevant)."""

    def sample(self, weights: Mapping[str, np.ndarray], *, architecture: str, patch_size: int, n: int, seed: int) -> np.ndarray:
        """``n`` synthetic pairs (n, 2, S, S) float32, label in {0, 1}."""


def engine_for_task(task: Task) -> TrainingEngine:
    """The real engine for ``task``: StyleGAN for ``stylegan-dp``, the DP-GAN engine otherwise.

    Status and synthesize requests use the DP-GAN engine; both read the same per-dataset accountant.
    """
    if task is Task.STYLEGAN_DP:
        from agent.site_service.stylegan_engine import StyleGanEngine

        return StyleGanEngine()
    from agent.site_service.dpgan_engine import DpGanEngine

    return DpGanEngine()


def epsilon_after_next_round(site: SiteConfig, dataset_id: str, mechanism: Mapping[str, Any] | None) -> float | None:
    """What the site's accountant would say after one more round with the same mechanism (for scheduling)."""
    if not mechanism:
        return None
    from agent.training.local_round import open_accountant

    return float(open_accountant(site, dataset_id).epsilon_if(
        noise_multiplier=float(mechanism["noise_multiplier"]),
        sample_rate=float(mechanism["sample_rate"]),
        steps=int(mechanism["steps"]),
    ))
