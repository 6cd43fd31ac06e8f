"""The ``ksalsa`` task at a site: the plain function the federation's handler calls.

``run_ksalsa_task(site, request)`` checks the site's policy first (task accepted, ``k >=
privacy.min_k``, enough distinct patients) and refuses with a :class:`~protocols.errors.PolicyError`
subclass before touching any image; then loads the site's fundus images, makes one synthetic
average per group, writes the release (PNG, DICOM OP, manifest) under
``<state>/outputs/ksalsa/<run_id>-r<round>/`` and signs a k-anonymity claim. The caller sends
``outcome.images`` with ``outcome.claim.payload`` and calls ``outcome.claim.commit()`` once the
egress guard has passed the reply (as for DP-GAN samples).

Models stay at the site: the generator checkpoint (``anonfed-stylegan-checkpoint/1``, EMA weights)
and the ReStyle encoder checkpoint default to ``<state>/models/stylegan.pt`` and
``<state>/models/encoder.pt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from agent.config import SiteConfig
from agent.ksalsa.baselines import Method
from agent.ksalsa.release import KsalsaRelease, require_k, sign_kanon_claim, write_release
from agent.records import FundusImage
from agent.site_service.claims import PendingClaim
from protocols.errors import BadInputError, EgressBlockedError, KAnonymityError
from protocols.tasks import Task

if TYPE_CHECKING:
    from torch import nn

    from agent.ksalsa.pipeline import Inverter

log = logging.getLogger(__name__)

MAX_STEPS = 10_000
GROUPING_SEED_NAME = "ksalsa-grouping.seed"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclasses.dataclass(frozen=True)
class KsalsaRequest:
    """What the coordinator asks for: k, the method and the alignment length."""

    run_id: str
    round: int
    k: int
    method: Method = Method.KSALSA
    steps: int = 100  # local style alignment steps per group
    dataset_id: str = "fundus"

    def __post_init__(self) -> None:
        # run_id names the release folder: no separators, no leading dot (as ledger names).
        if not isinstance(self.run_id, str) or not _RUN_ID.fullmatch(self.run_id):
            raise BadInputError(f"run_id: expected letters, digits, '.', '_', '-' (1-128, not starting with '.'), "
                                f"got {self.run_id!r}")
        if self.round < 0 or self.k < 1:
            raise BadInputError(f"round must be >= 0 and k >= 1, got round={self.round}, k={self.k}")
        if not isinstance(self.method, Method):
            raise BadInputError(f"method: expected one of {[m.value for m in Method]}, got {self.method!r}")
        if not 0 <= self.steps <= MAX_STEPS:
            raise BadInputError(f"steps: expected 0..{MAX_STEPS}, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class SiteModels:
    """Where the site keeps the models k-SALSA uses (never sent anywhere)."""

    generator: Path
    encoder: Path
    feature_network: str = "efficientnet-lite0"
    feature_weights: Path | None = None  # e.g. a VGG19 state dict the site holds

    @classmethod
    def default(cls, site: SiteConfig) -> "SiteModels":
        root = site.state.root / "models"
        return cls(root / "stylegan.pt", root / "encoder.pt")


@dataclasses.dataclass(frozen=True)
class KsalsaOutcome:
    """The released images (what leaves the site), the written release and the pending claim."""

    images: np.ndarray  # (groups, H, W, 3) uint8
    release: KsalsaRelease
    claim: PendingClaim | None

    def reply_fields(self, site_id: str, request: KsalsaRequest) -> dict[str, object]:
        """The plain fields a federation reply carries next to the array ``images`` (no identifiers)."""
        r = self.release
        return {
            "run_id": request.run_id, "round": request.round, "site_id": site_id, "k": r.k, "min_k": r.min_k,
            "method": r.method, "count": len(r.images), "cluster_sizes": list(r.cluster_sizes),
            "majority_grades": [i.majority_grade for i in r.images], "images_sha256": r.images_sha256,
            "guarantee": r.guarantee,
        }


def check_request(site: SiteConfig, request: KsalsaRequest) -> None:
    """Policy checks that need no data.

    Raises
    ------
    TaskRefusedError
        If the site does not accept task ``ksalsa``.
    KAnonymityError
        If ``request.k`` is below the site's ``privacy.min_k``.
    """
    from agent.site_service.policy import require_task

    require_task(site, Task.KSALSA)
    require_k(request.k, min_k=site.privacy.min_k)


def run_ksalsa_task(site: SiteConfig, request: KsalsaRequest, *, images: Sequence[FundusImage] | None = None,
                    models: SiteModels | None = None, device: str = "cpu", sign: bool = True) -> KsalsaOutcome:
    """Run one k-SALSA release at ``site`` (see module docstring).

    ``images`` defaults to the site's ingested fundus photographs.

    Raises
    ------
    TaskRefusedError, KAnonymityError
        See :func:`check_request`; KAnonymityError also when the site has fewer than ``k`` patients.
    EgressBlockedError
        If an output is a byte-exact copy of a real image (see :func:`refuse_copies`).
    PolicyError
        If the site has fewer than ``privacy.min_patients`` distinct patients.
    BadInputError
        If a model checkpoint is missing or does not fit.
    """
    from agent.ksalsa.pipeline import make_averages

    check_request(site, request)
    if images is None:
        from agent.ingest.datasets import load_fundus_images

        images = load_fundus_images(site)
    _require_patients(site, images, k=request.k)
    inverter = features = None
    if request.method in (Method.KSALSA, Method.CENTROID):
        inverter, features = load_models(models or SiteModels.default(site), device=device)
    from agent.ksalsa.style_alignment import AlignmentSettings

    grouping = site.privacy.ksalsa_groups
    averages = make_averages(images, method=request.method, k=request.k, inverter=inverter, features=features,
                             settings=AlignmentSettings(steps=request.steps), grouping=grouping,
                             grouping_seed=grouping_seed(site) if grouping == "random" else 0)
    refuse_copies(averages.images, images)
    out_dir = site.state.outputs / "ksalsa" / f"{request.run_id}-r{request.round}"
    release = write_release(
        averages.images, averages.clustering, grades=[im.grade for im in images],
        patient_keys=[im.patient_key for im in images], k=request.k, min_k=site.privacy.min_k,
        method=request.method.value, site_id=site.site_id, out_dir=out_dir, run_id=request.run_id, round=request.round,
    )
    claim = sign_kanon_claim(site, release, run_id=request.run_id, round=request.round,
                             dataset=request.dataset_id) if sign else None
    return KsalsaOutcome(averages.images, release, claim)


def grouping_seed(site: SiteConfig) -> int:
    """The site's secret seed for random k-SALSA groups, created on first use and kept with its keys.

    Secret, so nobody outside the site can redo the shuffle; fixed, so releases of the same data
    group the same patients together (two releases grouped differently could be intersected).

    Raises
    ------
    BadInputError
        If the seed file exists but is not a seed (it is never replaced silently).
    """
    import secrets

    from protocols.atomic_files import write_bytes_atomic

    path = site.state.keys / GROUPING_SEED_NAME
    if not path.exists():
        try:  # exclusive: of two first releases racing, both use the seed that was written first
            write_bytes_atomic(path, f"{secrets.randbits(128)}\n".encode(), mode=0o600, exclusive=True)
            log.info("created the site's secret seed for random k-SALSA groups (%s)", path.name)
        except FileExistsError:
            pass
    text = path.read_text().strip()
    if not text.isdigit():
        raise BadInputError(f"{path.name} in the site's keys folder is not a seed; restore it from the site's backup "
                            "(a new seed would group the same patients differently from earlier releases)")
    return int(text)


def refuse_copies(outputs: np.ndarray, images: Sequence[FundusImage]) -> None:
    """Refuse a release in which an output is a byte-exact copy of a real image at the output size.

    An average can equal a real photograph when a group's images are duplicates (the same picture
    filed under several patients): k-anonymity would hold on paper and fail in fact.

    Raises
    ------
    EgressBlockedError
        Naming how many outputs are copies.
    """
    from agent.ksalsa.baselines import to_uint8
    from agent.ksalsa.pipeline import prepare_images

    real = to_uint8(prepare_images(images, outputs.shape[1]))
    fingerprints = {hashlib.sha256(x.tobytes()).hexdigest() for x in real}
    copies = sum(hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() in fingerprints for x in outputs)
    if copies:
        raise EgressBlockedError(
            f"{copies} k-SALSA output(s) are byte-exact copies of a real image (duplicate images under several "
            "patients?); nothing was released: remove the duplicates from the site data and run again"
        )


def _require_patients(site: SiteConfig, images: Sequence[FundusImage], *, k: int) -> None:
    from agent.site_service.policy import require_patients

    patients = len({im.patient_key for im in images})
    if patients < k:
        raise KAnonymityError(f"the site has {patients} distinct patients with fundus images, k={k} needs at least {k}; "
                              "ingest more patients or ask for a smaller k (not below the site's privacy.min_k)")
    require_patients(site, patients)


def load_models(models: SiteModels, *, device: str = "cpu") -> tuple["Inverter", "nn.Module"]:
    """(Inverter, feature network) from the site's checkpoints, frozen, on ``device``.

    Raises
    ------
    BadInputError
        If a checkpoint is missing, not of the expected format, or does not fit the generator.
    """
    from agent.features import load_feature_extractor
    from agent.inversion.encoder import EncoderConfig, ReStyleEncoder
    from agent.inversion.train import ENCODER_FORMAT
    from agent.ksalsa.pipeline import Inverter
    from agent.stylegan.checkpoint import generator_from_checkpoint, load_checkpoint

    for path, what in ((models.generator, "StyleGAN generator"), (models.encoder, "ReStyle encoder")):
        if not Path(path).is_file():
            raise BadInputError(f"k-SALSA needs the site's {what} checkpoint at {Path(path).name} in the models folder; "
                                "train it first (anonfed stylegan / inversion) or pass its path")
    G = generator_from_checkpoint(load_checkpoint(models.generator)).to(device)
    payload = load_checkpoint(models.encoder, fmt=ENCODER_FORMAT)
    cfg = EncoderConfig(**payload["encoder_config"])
    if (cfg.resolution, cfg.num_ws, cfg.w_dim) != (G.cfg.resolution, G.num_ws, G.cfg.w_dim):
        raise BadInputError("the encoder checkpoint was trained for another generator shape; retrain the encoder")
    encoder = ReStyleEncoder(cfg)
    encoder.load_state_dict(payload["state"]["encoder"])
    encoder = encoder.to(device).eval().requires_grad_(False)
    features = load_feature_extractor(models.feature_network, weights_path=models.feature_weights).to(device)
    return Inverter(G, encoder), features
