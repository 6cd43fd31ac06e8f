"""Patient-level train/test splits: no patient ever contributes to both sides.

Patches of one patient are strongly correlated (same vessel tree), so splitting patches at random
would leak test patients into training and inflate every utility figure; the seed papers split by
patient, and so does this.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from agent.patching.patches import PatchSet
from protocols.errors import BadInputError


def split_patients(patients: Sequence[str], *, test_fraction: float, rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Shuffle distinct patient keys and cut them into (train, test), both non-empty and sorted.

    The test side gets ``round(test_fraction * n)`` patients, at least 1 and at most ``n - 1``.

    Raises
    ------
    BadInputError
        If fewer than two distinct patients are given or ``test_fraction`` is not in (0, 1).
    """
    distinct = sorted(set(patients))
    if len(distinct) < 2:
        raise BadInputError(f"a patient-level split needs >= 2 distinct patients, got {len(distinct)}; add patients")
    if not 0.0 < test_fraction < 1.0:
        raise BadInputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(len(distinct) - 1, max(1, round(test_fraction * len(distinct))))
    order = rng.permutation(len(distinct))
    test = tuple(sorted(distinct[i] for i in order[:n_test]))
    train = tuple(sorted(distinct[i] for i in order[n_test:]))
    return train, test


def split_patch_set(patches: PatchSet, *, test_fraction: float, rng: np.random.Generator) -> tuple[PatchSet, PatchSet]:
    """(train, test) subsets of ``patches`` split by patient (see :func:`split_patients`)."""
    train, test = split_patients(patches.patients, test_fraction=test_fraction, rng=rng)
    return patches.subset(train), patches.subset(test)
