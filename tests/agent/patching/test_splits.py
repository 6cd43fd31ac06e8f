"""Patient-level splits never share a patient and are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.patching.patches import extract_patches
from agent.patching.splits import split_patch_set, split_patients
from agent.records import LabeledVolume
from protocols.errors import BadInputError


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 40), duplicates=st.integers(0, 5), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_split_is_a_partition_of_distinct_patients(n: int, duplicates: int, fraction: float, seed: int) -> None:
    patients = [f"p{i}" for i in range(n)] + [f"p{i}" for i in range(min(n, duplicates))]
    train, test = split_patients(patients, test_fraction=fraction, rng=np.random.default_rng(seed))
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(patients)
    assert train and test and list(train) == sorted(train)
    assert (train, test) == split_patients(patients, test_fraction=fraction, rng=np.random.default_rng(seed))


def test_split_patch_set_keeps_each_patients_patches_together(tiny_volumes: list[LabeledVolume]) -> None:
    patches = extract_patches(tiny_volumes, size=8, per_volume=4, rng=np.random.default_rng(0))
    train, test = split_patch_set(patches, test_fraction=0.34, rng=np.random.default_rng(1))
    assert len(test.patients) == 1 and len(train) + len(test) == len(patches)
    assert set(train.patient_keys).isdisjoint(test.patient_keys)


@pytest.mark.parametrize(("patients", "fraction", "match"), [(["a", "a"], 0.5, ">= 2 distinct"), (["a", "b"], 0.0, "test_fraction"), (["a", "b"], 1.0, "test_fraction")])
def test_invalid_splits_are_refused(patients: list[str], fraction: float, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        split_patients(patients, test_fraction=fraction, rng=np.random.default_rng(0))
