"""The StyleGAN training engine: fundus photographs -> one federated-dp StyleGAN2 round.

Same seam as :mod:`agent.site_service.dpgan_engine`, so ``stylegan-dp`` requests pass the same
handler, policy, egress guard and claim signing as DP-GAN rounds. The round itself (noise
calibration, durable reservation of the discriminator's DP-SGD steps, training) is
:func:`agent.stylegan.site_round.run_stylegan_dp_round`; it shares the site's accountant with the
DP-GAN engine, so every DP step on a dataset composes, whatever the task.

How the instruction's fields read for StyleGAN: ``architecture`` names a configuration of
:data:`agent.stylegan.site_round.FEDERATED_ARCHITECTURES`, ``patch_size`` is its resolution and
``patches_per_volume`` caps how many of one patient's images a DP step uses. The data are always
the site's fundus photographs, so the round must be accounted under :data:`FUNDUS_DATASET`.

torch, opacus and the ingest code are imported on first use, so a status query stays cheap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from agent.config import SiteConfig
from agent.site_service.engine import LocalData, RoundOutcome, dp_plan_fields
from agent.site_service.policy import RoundTerms
from protocols.errors import BadInputError
from protocols.messages import TrainInstruction

if TYPE_CHECKING:
    from agent.records import FundusImage
    from agent.stylegan.config import TrainingConfig

log = logging.getLogger(__name__)

#: The dataset (accountant) a stylegan-dp round trains on and is charged to.
FUNDUS_DATASET = "fundus"

#: Loads the site's fundus photographs (default: the ingest catalog).
FundusLoader = Callable[[SiteConfig], Sequence["FundusImage"]]


class StyleGanEngine:
    """:class:`~agent.site_service.engine.TrainingEngine` for ``stylegan-dp`` rounds.

    Parameters
    ----------
    load_images
        Where the fundus photographs come from; default :func:`agent.ingest.datasets.load_fundus_images`.
    training
        Optimisation settings of the StyleGAN trainer; default :class:`agent.stylegan.config.TrainingConfig`.
    """

    def __init__(self, *, load_images: FundusLoader | None = None, training: "TrainingConfig | None" = None) -> None:
        self._load_images = load_images
        self._training = training

    def epsilon_spent(self, site: SiteConfig, *, dataset_id: str) -> float:
        from agent.training.local_round import current_epsilon

        return float(current_epsilon(site, dataset_id))

    def load_data(self, site: SiteConfig, *, dataset_id: str, patch_size: int, per_volume: int, seed: int) -> LocalData:
        """The site's fundus photographs at ``patch_size`` px, with a patient index per image.

        Raises
        ------
        BadInputError
            If the round is accounted under another dataset than :data:`FUNDUS_DATASET` (the spend
            would land in the wrong accountant), or the site has no fundus photographs.
        """
        from agent.stylegan.data import fundus_to_tensors

        if dataset_id != FUNDUS_DATASET:
            raise BadInputError(
                f"stylegan-dp trains on the site's fundus photographs, accounted under dataset "
                f"{FUNDUS_DATASET!r}; the round plan says dataset_id {dataset_id!r}: set dataset-id = \"fundus\""
            )
        if self._load_images is None:
            from agent.ingest.datasets import load_fundus_images as loader
        else:
            loader = self._load_images
        photos = list(loader(site))
        if not photos:
            raise BadInputError("the site catalog holds no fundus photographs; run `anonfed ingest --config <site yaml>` first")
        images, patient_index = fundus_to_tensors(photos, resolution=patch_size)
        num_patients = int(patient_index.max()) + 1
        log.info("round data: %d fundus images of %d patients at %d px", images.shape[0], num_patients, patch_size)
        return LocalData(
            patches=(images, patient_index),
            num_patients=num_patients,
            real_images=images[:, 0].numpy().astype(np.float32),
            patient_keys=frozenset(str(p.patient_key) for p in photos),
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
        from agent.stylegan.config import TrainingConfig
        from agent.stylegan.site_round import StyleGANRoundPlan, federated_architecture, run_stylegan_dp_round

        arch = federated_architecture(instruction.architecture, resolution=instruction.patch_size)
        images, patient_index = data.patches
        plan = StyleGANRoundPlan(**dp_plan_fields(instruction, terms, num_patients=data.num_patients))
        result = run_stylegan_dp_round(
            site=site, dataset_id=instruction.dataset_id, images=images, patient_index=patient_index,
            weights=dict(weights) if weights is not None else None, plan=plan, arch=arch,
            train=self._training or TrainingConfig(), images_per_patient=instruction.patches_per_volume,
        )
        return RoundOutcome.of(result, site=site, dataset_id=instruction.dataset_id)

    def reference_weights(self, *, architecture: str, patch_size: int) -> dict[str, np.ndarray]:
        """What a federated-dp round of ``architecture`` releases: names, shapes, float32 (for the guard).

        Raises
        ------
        BadInputError
            If ``architecture`` is not a federated StyleGAN configuration at ``patch_size`` px.
        """
        from agent.stylegan.site_round import federated_architecture, release_arrays_spec

        return release_arrays_spec(federated_architecture(architecture, resolution=patch_size))

    def sample(self, weights: Mapping[str, np.ndarray], *, architecture: str, patch_size: int, n: int, seed: int) -> np.ndarray:
        """Not offered: synthesize queries release DP-GAN image+label pairs only.

        Raises
        ------
        BadInputError
            Always; the aggregated StyleGAN generator is already DP and can be sampled anywhere.
        """
        raise BadInputError(
            "synthesize queries release DP-GAN image+label pairs; a stylegan-dp model is released as aggregated "
            "weights (the coordinator's global_weights.npz), whose generator can be sampled without the site"
        )
