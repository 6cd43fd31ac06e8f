"""The real training engine: ingest catalog -> patches -> DP-GAN local round -> durable accountant.

Imports of torch, opacus and the ingest code happen on first use, so a status query stays cheap.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from agent.config import SiteConfig
from agent.site_service.engine import LocalData, RoundOutcome, dp_plan_fields
from agent.site_service.policy import RoundTerms
from protocols.errors import BadInputError
from protocols.messages import TrainInstruction

log = logging.getLogger(__name__)


class DpGanEngine:
    """:class:`~agent.site_service.engine.TrainingEngine` backed by ``agent.training.local_round``."""

    def epsilon_spent(self, site: SiteConfig, *, dataset_id: str) -> float:
        from agent.training.local_round import current_epsilon

        return float(current_epsilon(site, dataset_id))

    def load_data(self, site: SiteConfig, *, dataset_id: str, patch_size: int, per_volume: int, seed: int) -> LocalData:
        from agent.ingest.datasets import load_labeled_volumes
        from agent.patching.patches import extract_patches

        volumes = load_labeled_volumes(site)
        if not volumes:
            raise BadInputError(
                "the site catalog holds no labelled TOF volumes; run `anonfed ingest --config <site yaml>` first"
            )
        patches = extract_patches(volumes, size=patch_size, per_volume=per_volume, rng=np.random.default_rng(seed))
        log.info("round data: %d patches from %d patients", patches.images.shape[0], len(patches.patients))
        return LocalData(
            patches=patches,
            num_patients=len(patches.patients),
            real_images=np.asarray(patches.images[:, 0], dtype=np.float32),
            patient_keys=frozenset(str(k) for k in patches.patients),
        )

    def train(
        self,
        site: SiteConfig,
        *,
        data: LocalData,
        weights: Mapping[str, np.ndarray] | None,
        instruction: TrainInstruction,
        terms: RoundTerms,
    ) -> RoundOutcome:
        from agent.training.local_round import RoundPlan, run_local_round

        plan = RoundPlan(architecture=instruction.architecture, patch_size=instruction.patch_size,
                         **dp_plan_fields(instruction, terms, num_patients=data.num_patients))
        result = run_local_round(
            site=site, dataset_id=instruction.dataset_id, patches=data.patches,
            weights=dict(weights) if weights is not None else None, plan=plan,
        )
        return RoundOutcome.of(result, site=site, dataset_id=instruction.dataset_id)

    def reference_weights(self, *, architecture: str, patch_size: int) -> dict[str, np.ndarray]:
        from agent.models import initial_weights

        return initial_weights(architecture, patch_size, 0)

    def sample(self, weights: Mapping[str, np.ndarray], *, architecture: str, patch_size: int, n: int, seed: int) -> np.ndarray:
        from agent.models import sample_pairs

        return sample_pairs(dict(weights), architecture=architecture, patch_size=patch_size, n=n, seed=seed)
