"""Patient-level clustering of inverted latents with a k-anonymity guarantee (MDAV-like).

Invariants (checked by property tests):

* every group holds images of at least ``k`` *distinct patients* (not images);
* every image is in exactly one group, and all images of one patient are in the same group;
* the last group takes every patient left over, so it has ``k .. 2k-1`` patients; all earlier
  groups have exactly ``k`` patients;
* the result depends only on the inputs (ties broken by image index, float64 distances).

The published k-SALSA code takes a farthest point and its k-1 nearest *images*; when N is not a
multiple of k its last cluster has fewer than k members, and two images of one patient count as
two members. Both break k-anonymity; this module works on patients and never does either.

Algorithm, while at least ``2k`` patients remain: take the remaining image farthest from the
centroid of the remaining images (MDAV's seed), then add the patients nearest to that seed (a
patient's distance is that of its closest image) until the group holds ``k`` patients, each with
all its images. The ``k .. 2k-1`` patients left form the last group.

``grouping="random"`` ignores the latents: patients are shuffled with a given seed and cut into
consecutive groups of ``k`` (the last takes ``k .. 2k-1``). Groups are then not made of similar
images, so an output resembles none of its members more than the average does; that is a privacy
variant (see benchmarks/results/ksalsa), not the published method.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from protocols.errors import BadInputError, KAnonymityError
from protocols.messages import KSALSA_GROUPINGS as GROUPINGS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Group:
    """One cluster: the image indices it averages and the distinct patients they come from.

    ``patient_keys`` are site pseudonyms; they stay at the site (releases carry only counts).
    """

    indices: tuple[int, ...]
    patient_keys: tuple[str, ...]

    @property
    def num_patients(self) -> int:
        return len(self.patient_keys)

    @property
    def num_images(self) -> int:
        return len(self.indices)


@dataclasses.dataclass(frozen=True)
class Clustering:
    """Groups of a site's images, each from at least ``k`` distinct patients."""

    k: int
    groups: tuple[Group, ...]
    num_images: int
    grouping: str = "nearest"  # how the groups were formed (one of GROUPINGS)

    @property
    def patient_counts(self) -> tuple[int, ...]:
        """Distinct patients per group, in group order (what the ledger's k-anonymity claim records)."""
        return tuple(g.num_patients for g in self.groups)

    def labels(self) -> np.ndarray:
        """Group index of every image, shape (N,)."""
        out = np.full(self.num_images, -1, dtype=np.int64)
        for gi, g in enumerate(self.groups):
            out[list(g.indices)] = gi
        return out

    def check(self, *, k: int | None = None) -> None:
        """Re-verify the guarantee (defence in depth before a release).

        Raises
        ------
        KAnonymityError
            If a group has fewer than ``k`` distinct patients or an image is missing or repeated.
        """
        k = self.k if k is None else k
        for gi, g in enumerate(self.groups):
            if g.num_patients < k:
                raise KAnonymityError(
                    f"group {gi} averages {g.num_patients} distinct patients, k-anonymity needs >= {k}; "
                    "re-cluster with this k"
                )
        seen = sorted(i for g in self.groups for i in g.indices)
        if seen != list(range(self.num_images)):
            raise KAnonymityError(
                f"the groups cover {len(seen)} image slots for {self.num_images} images; every image must be in "
                "exactly one group: re-cluster"
            )


def cluster_by_patient(latents: np.ndarray, patient_keys: Sequence[str], *, k: int, grouping: str = "nearest",
                       seed: int = 0) -> Clustering:
    """Group images so that each group holds all images of at least ``k`` distinct patients.

    Parameters
    ----------
    latents
        (N, ...) codes of the N images (W+ codes are flattened); distances are Euclidean.
    patient_keys
        The patient pseudonym of each image (length N).
    k
        Minimum number of distinct patients per group (>= 1).
    grouping
        "nearest" (MDAV-like, the default) or "random" (patients shuffled with ``seed``).
    seed
        Seed of the "random" shuffle (unused by "nearest").

    Raises
    ------
    BadInputError
        If shapes disagree, ``k < 1``, a latent is not finite or ``grouping`` is unknown.
    KAnonymityError
        If the images come from fewer than ``k`` distinct patients.
    """
    x = np.asarray(latents, dtype=np.float64)
    n = x.shape[0] if x.ndim >= 1 else 0
    if x.ndim < 2 or n != len(patient_keys):
        raise BadInputError(f"latents: expected (N, ...) codes for {len(patient_keys)} images, got shape {x.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadInputError(f"k: expected an integer >= 1, got {k!r}")
    if grouping not in GROUPINGS:
        raise BadInputError(f"grouping: expected one of {GROUPINGS}, got {grouping!r}")
    x = x.reshape(n, -1)
    if not np.isfinite(x).all():
        raise BadInputError("latents: every code must be finite; re-run the inversion")
    keys = [str(p) for p in patient_keys]
    # Patients in order of first appearance: deterministic, independent of string hashing.
    patient_ids: dict[str, int] = {}
    image_patient = np.array([patient_ids.setdefault(p, len(patient_ids)) for p in keys], dtype=np.int64)
    num_patients = len(patient_ids)
    if num_patients < k:
        raise KAnonymityError(
            f"the site has {num_patients} distinct patients, k-anonymity with k={k} needs at least {k}; "
            "ingest more patients or use a smaller k (not below the site's privacy.min_k)"
        )
    members = [np.flatnonzero(image_patient == p) for p in range(num_patients)]
    groups: list[list[int]] = []
    if grouping == "random":
        order = [int(p) for p in np.random.default_rng(seed).permutation(num_patients)]
        cut = (num_patients // k - 1) * k  # every group but the last has exactly k patients
        groups = [order[i : i + k] for i in range(0, cut, k)] + [order[cut:]]
    else:
        remaining = np.ones(num_patients, dtype=bool)
        while remaining.sum() >= 2 * k:
            groups.append(_take_group(x, image_patient, members, remaining, k=k))
        groups.append([int(p) for p in np.flatnonzero(remaining)])  # k .. 2k-1 patients left
    names = list(patient_ids)
    result = Clustering(
        k=int(k),
        groups=tuple(
            Group(
                indices=tuple(sorted(int(i) for p in g for i in members[p])),
                patient_keys=tuple(names[p] for p in g),
            )
            for g in groups
        ),
        num_images=n,
        grouping=grouping,
    )
    result.check()
    log.info("clustered %d images of %d patients into %d groups (k=%d, %s)", n, num_patients, len(groups), k, grouping)
    return result


def _take_group(x: np.ndarray, image_patient: np.ndarray, members: list[np.ndarray], remaining: np.ndarray,
                *, k: int) -> list[int]:
    """Remove and return ``k`` patients: the seed's patient and its ``k-1`` nearest patients."""
    live = np.flatnonzero(remaining[image_patient])  # image indices still unassigned, ascending
    centroid = x[live].mean(axis=0)
    far = _sq_dist(x[live], centroid)
    seed = live[_first_max(far)]
    to_seed = _sq_dist(x, x[seed])
    # A patient's distance is that of its closest image; ties go to the lower patient index.
    candidates = np.flatnonzero(remaining)
    dist = np.array([to_seed[members[p]].min() for p in candidates])
    order = candidates[np.lexsort((candidates, dist))]
    seed_patient = int(image_patient[seed])
    chosen = [seed_patient] + [int(p) for p in order if p != seed_patient][: k - 1]
    remaining[chosen] = False
    return chosen


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.square(a - b).sum(axis=-1)


def _first_max(values: np.ndarray) -> int:
    """Index of the largest value, the first one on ties (np.argmax's documented rule)."""
    return int(np.argmax(values))
