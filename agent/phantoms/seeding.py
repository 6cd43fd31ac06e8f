"""Independent, reproducible random streams and fake identifiers for the phantoms.

Every random quantity is drawn from a generator keyed by a *path* such as (TOF, site 0, patient 3):
``SeedSequence(seed, spawn_key=path)``. Streams for different paths are statistically independent
and do not depend on how many sites or patients exist, so adding a site never changes site 1.
"""

from __future__ import annotations

import enum

import numpy as np
from pydicom.uid import generate_uid

# Prefix under which phantom UIDs are generated: pydicom's own root is meant for exactly this use
# (UIDs for objects that are not from a real device); our entropy makes them deterministic.
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


class Stream(enum.IntEnum):
    """The first element of every stream path: which part of the consortium draws from it."""

    SITE = 1  # per-site scanner profile
    TOF = 2  # per-patient vessel tree and per-study acquisition
    FUNDUS = 3  # per-patient retina and per-image acquisition
    IDENTITY = 4  # fake patient identifiers and names
    UID = 5  # DICOM UIDs


def rng_for(seed: int, stream: Stream, *path: int) -> np.random.Generator:
    """A generator for one stream path, independent of every other path.

    Parameters
    ----------
    seed
        The consortium seed (``anonfed phantoms --seed``).
    stream
        Which part of the consortium draws (see :class:`Stream`).
    path
        Non-negative integers, e.g. ``(site_index, patient_index, study_index)``.

    Raises
    ------
    ValueError
        If the seed or a path element is negative.
    """
    if seed < 0 or any(p < 0 for p in path):
        raise ValueError(f"seed and stream path must be non-negative, got seed={seed} path={path}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(stream), *map(int, path))))


def uid_for(seed: int, *path: int | str) -> str:
    """A DICOM UID that is a pure function of the seed and the path (same inputs, same UID)."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["anonfed-phantom", str(seed), *map(str, path)]))


def site_id_for(index: int) -> str:
    """``hospital-a``, ``hospital-b``, ... ``hospital-z``, then ``hospital-aa``, ..."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f"hospital-{letters}"


def site_prefix(site_id: str) -> str:
    """Upper-case patient-ID prefix of a site: ``hospital-a`` -> ``HA``."""
    return "H" + site_id.rsplit("-", 1)[-1].upper()


def fake_patient_ids(seed: int, site_index: int, site_id: str, count: int, *, kind: Stream) -> list[str]:
    """``count`` distinct, realistic but FAKE patient IDs for one site (e.g. ``HA-004711``).

    TOF and fundus patients are drawn from disjoint number ranges so they never collide. Drawn one
    after another (redrawing repeats), so asking for more patients keeps the first IDs unchanged.
    """
    rng = rng_for(seed, Stream.IDENTITY, int(kind), site_index)
    low = 100_000 if kind is Stream.TOF else 500_000
    numbers: list[int] = []
    taken: set[int] = set()
    while len(numbers) < count:
        n = int(rng.integers(low, low + 400_000))
        if n not in taken:
            taken.add(n)
            numbers.append(n)
    return [f"{site_prefix(site_id)}-{n:06d}" for n in numbers]


def fake_patient_name(patient_number: int) -> str:
    """DICOM person name that is obviously a phantom: ``Phantom^Patient07``."""
    return f"Phantom^Patient{patient_number:02d}"
