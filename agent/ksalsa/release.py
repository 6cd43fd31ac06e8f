"""Release k-SALSA outputs: one image per group as PNG and as DICOM OP marked synthetic, a manifest
and a signed k-anonymity claim for the ledger.

What a release says about each image: its group size in distinct patients and in images, k, and
the group's majority DR grade. It never carries a patient key, an image index or anything that
tells which real images were averaged. The release is refused before anything is written if
``k`` is below the site's ``privacy.min_k`` or a group has fewer than ``k`` distinct patients.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from agent.config import SiteConfig
from agent.ksalsa.clustering import Clustering
from agent.site_service.claims import PendingClaim
from protocols.errors import BadInputError, KAnonymityError
from protocols.tasks import Task

if TYPE_CHECKING:
    from agent.ledger import SiteClaimLog

log = logging.getLogger(__name__)

MANIFEST_NAME = "ksalsa-release.json"


@dataclasses.dataclass(frozen=True)
class ReleasedImage:
    """One synthetic average as it leaves the site."""

    number: int  # 1-based, in group order
    num_patients: int
    num_images: int
    majority_grade: int | None
    png: str  # file name inside the release folder
    dicom: str  # path relative to the release folder


@dataclasses.dataclass(frozen=True)
class KsalsaRelease:
    """A written release (files in ``folder``) and the figures its ledger claim records."""

    folder: Path
    k: int
    min_k: int
    method: str
    images: tuple[ReleasedImage, ...]
    images_sha256: str  # sha256 of the canonical (G, H, W, 3) uint8 array (protocols.messages)
    images_size: int
    grouping: str = "nearest"  # how the groups were formed (agent.ksalsa.clustering.GROUPINGS)

    @property
    def guarantee(self) -> str:
        """What the release promises, in words (manifest and reply)."""
        return (f"k-anonymity: every image averages >= {self.k} distinct patients"
                + ("; groups drawn at random, not by similarity" if self.grouping == "random" else ""))

    @property
    def cluster_sizes(self) -> tuple[int, ...]:
        return tuple(i.num_patients for i in self.images)


def require_k(k: int, *, min_k: int) -> None:
    """Raise unless ``k`` meets the site's minimum.

    Raises
    ------
    KAnonymityError
        If ``k < min_k``; the site never lowers k silently.
    """
    if k < min_k:
        raise KAnonymityError(
            f"k={k} is below the site's privacy.min_k={min_k}; ask for k >= {min_k} (a lower k needs a "
            "policy change at the site)"
        )


def majority_grade(grades: Sequence[int | None], patient_keys: Sequence[str]) -> int | None:
    """Most common grade among a group's *patients* (each patient votes once, with its own
    most common grade); ties go to the more severe grade. None if no image is graded."""
    per_patient: dict[str, Counter[int]] = {}
    for g, key in zip(grades, patient_keys, strict=True):
        if g is not None:
            per_patient.setdefault(key, Counter())[int(g)] += 1
    if not per_patient:
        return None
    votes = Counter(max(c, key=lambda grade: (c[grade], grade)) for c in per_patient.values())
    return max(votes, key=lambda grade: (votes[grade], grade))


def write_release(
    images: np.ndarray,
    clustering: Clustering,
    *,
    grades: Sequence[int | None],
    patient_keys: Sequence[str],
    k: int,
    min_k: int,
    method: str,
    site_id: str,
    out_dir: Path,
    run_id: str | None = None,
    round: int | None = None,
    laterality: str = "B",
) -> KsalsaRelease:
    """Write one PNG and one DICOM OP per group, and the manifest, into ``out_dir``.

    ``images`` is (groups, H, W, 3) uint8 in group order; ``grades`` and ``patient_keys`` are per
    clustered image. ``laterality`` is B (both eyes) by default since a group mixes eyes.

    Raises
    ------
    KAnonymityError
        If ``k < min_k``, the clustering was made for a smaller k, or a group has fewer than ``k``
        distinct patients.
    BadInputError
        If the arrays do not match the clustering.
    """
    from agent.export.fundus_dicom import write_fundus_images
    from agent.export.synthetic_marking import SyntheticProvenance
    from agent.phantoms.png_writers import write_png
    from protocols.messages import array_sha256, canonical_array_bytes

    require_k(k, min_k=min_k)
    if clustering.k < k:
        raise KAnonymityError(f"the clustering guarantees k={clustering.k}, the release claims k={k}; re-cluster with k={k}")
    clustering.check(k=k)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != len(clustering.groups) or images.shape[3] != 3 or images.dtype != np.uint8:
        raise BadInputError(f"images: expected ({len(clustering.groups)}, H, W, 3) uint8, one per group; got "
                            f"{images.shape} {images.dtype}")
    if len(grades) != clustering.num_images or len(patient_keys) != clustering.num_images:
        raise BadInputError(f"grades and patient_keys: expected {clustering.num_images} each, got {len(grades)} and "
                            f"{len(patient_keys)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = SyntheticProvenance(method=Task.KSALSA, site_id=site_id, run_id=run_id, round=round, k=k)
    export = write_fundus_images(images, out_dir / "dicom", provenance=provenance, laterality=laterality)
    released = []
    for i, (group, rgb, dcm) in enumerate(zip(clustering.groups, images, export.images, strict=True), start=1):
        png = f"ksalsa-{i:05d}.png"
        write_png(out_dir / png, rgb)
        idx = list(group.indices)
        released.append(ReleasedImage(
            number=i, num_patients=group.num_patients, num_images=group.num_images,
            majority_grade=majority_grade([grades[j] for j in idx], [patient_keys[j] for j in idx]),
            png=png, dicom=str(dcm.relative_to(out_dir)),
        ))
    release = KsalsaRelease(
        folder=out_dir, k=k, min_k=min_k, method=method, images=tuple(released),
        images_sha256=array_sha256(images), images_size=len(canonical_array_bytes(images)), grouping=clustering.grouping,
    )
    _write_manifest(release, site_id=site_id)
    log.info("released %d k-SALSA images (k=%d, method %s, %s groups)", len(released), k, method, clustering.grouping)
    return release


def _write_manifest(release: KsalsaRelease, *, site_id: str) -> None:
    from protocols.atomic_files import write_text_atomic

    body = {
        "task": Task.KSALSA.value, "site_id": site_id, "method": release.method, "k": release.k,
        "min_k": release.min_k, "images_sha256": release.images_sha256, "grouping": release.grouping,
        "guarantee": release.guarantee,
        "images": [dataclasses.asdict(i) for i in release.images],
    }
    write_text_atomic(release.folder / MANIFEST_NAME, json.dumps(body, indent=2, sort_keys=True) + "\n")


def sign_kanon_claim(site: SiteConfig, release: KsalsaRelease, *, run_id: str, round: int, dataset: str = "fundus"
                     ) -> PendingClaim | None:
    """Sign the release's k-anonymity claim with the site key; None (and a warning) without a key.

    ``PendingClaim.commit`` records the claim in the site's claim log (fsync'd); call it just before the
    release leaves the site, as the DP-GAN path does.

    Raises
    ------
    BadInputError
        If the site key exists but cannot be loaded.
    """
    from agent.ledger import SiteClaimLog, claim_log_path, load_site_key, sign_claim, site_key_path
    from protocols.ledger import Artifact, ArtifactKind, KAnonRelease, MechanismKind, PlainMechanism

    if not site_key_path(site.state.keys, site.site_id).is_file():
        log.warning("no site signing key; the k-SALSA release carries no ledger claim (run `anonfed site enroll`)")
        return None
    key = load_site_key(site)
    claim_log = SiteClaimLog(claim_log_path(site.state.root))
    claim = claim_log.new_claim(
        run_id=run_id, round=round, site=site.site_id, key_id=key.key_id, task=Task.KSALSA,
        dataset=dataset, mechanism=PlainMechanism(MechanismKind.K_ANONYMITY), epsilon=0.0,
        cumulative_epsilon=_last_cumulative(claim_log, dataset),
        kanon=KAnonRelease(release.k, release.min_k, release.cluster_sizes),
        artifacts=(Artifact(f"ksalsa-r{round}", ArtifactKind.SYNTHETIC, release.images_sha256, release.images_size),),
    )
    signed = sign_claim(claim, key)
    return PendingClaim(signed.to_bytes(), lambda: claim_log.record(signed))


def _last_cumulative(claim_log: "SiteClaimLog", dataset: str) -> float:
    """The dataset's cumulative epsilon so far: a k-anonymity release adds no DP cost to it."""
    from protocols.ledger import DpSgdMechanism

    for signed in reversed(claim_log.claims()):
        c = signed.claim
        if c.dataset == dataset and isinstance(c.mechanism, DpSgdMechanism):
            return float(c.cumulative_epsilon)
    return 0.0
