"""Patient-level k-anonymous clustering: the guarantee for any N, k, repeats and duplicates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ksalsa.clustering import cluster_by_patient
from protocols.errors import BadInputError, KAnonymityError


@st.composite
def site_latents(draw: st.DrawFn) -> tuple[np.ndarray, list[str], int]:
    """Random patients with 1-4 images each, some exact duplicate codes, shuffled image order."""
    k = draw(st.integers(1, 7))
    patients = draw(st.integers(k, 40))
    per_patient = draw(st.lists(st.integers(1, 4), min_size=patients, max_size=patients))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    keys = [f"p{p}" for p, n in enumerate(per_patient) for _ in range(n)]
    dim = draw(st.sampled_from([1, 2, 8]))
    codes = rng.normal(size=(len(keys), dim)).round(draw(st.sampled_from([0, 1, 6])))  # rounding makes ties
    if draw(st.booleans()):  # duplicate images: copies of other images' codes, within and across patients
        src = rng.integers(0, len(keys), size=len(keys) // 2)
        dst = rng.integers(0, len(keys), size=len(keys) // 2)
        codes[dst] = codes[src]
    order = rng.permutation(len(keys))
    return codes[order], [keys[i] for i in order], k


def _assert_guarantee(codes: np.ndarray, keys: list[str], k: int, grouping: str = "nearest") -> None:
    result = cluster_by_patient(codes, keys, k=k, grouping=grouping, seed=len(keys))
    all_indices = sorted(i for g in result.groups for i in g.indices)
    assert all_indices == list(range(len(keys)))  # every image in exactly one group
    for g in result.groups:
        distinct = {keys[i] for i in g.indices}
        assert len(distinct) >= k
        assert len(distinct) == g.num_patients == len(set(g.patient_keys))
        assert distinct == set(g.patient_keys)
    assert all(g.num_patients == k for g in result.groups[:-1])
    assert k <= result.groups[-1].num_patients <= 2 * k - 1 or len(result.groups) == 1
    owner: dict[str, int] = {}
    for gi, g in enumerate(result.groups):
        for i in g.indices:
            assert owner.setdefault(keys[i], gi) == gi  # all images of a patient in one group
    assert result.patient_counts == tuple(g.num_patients for g in result.groups)
    again = cluster_by_patient(codes.copy(), list(keys), k=k, grouping=grouping, seed=len(keys))
    assert again == result  # deterministic


@settings(max_examples=150, deadline=None)
@given(site_latents(), st.sampled_from(["nearest", "random"]))
def test_every_group_has_k_distinct_patients(case: tuple[np.ndarray, list[str], int], grouping: str) -> None:
    _assert_guarantee(*case, grouping=grouping)


def test_random_groups_ignore_the_codes_and_follow_the_seed() -> None:
    keys = [f"p{i}" for i in range(23)]
    codes = np.arange(23.0).reshape(-1, 1)  # nearest grouping would take runs of neighbours
    a = cluster_by_patient(codes, keys, k=4, grouping="random", seed=1)
    assert a == cluster_by_patient(-codes, keys, k=4, grouping="random", seed=1)
    assert a != cluster_by_patient(codes, keys, k=4, grouping="random", seed=2)
    assert a != cluster_by_patient(codes, keys, k=4)
    with pytest.raises(BadInputError, match="grouping"):
        cluster_by_patient(codes, keys, k=4, grouping="farthest")


@pytest.mark.parametrize(("patients", "k"), [(11, 5), (13, 4), (7, 3), (9, 5), (6, 5)])
def test_n_not_divisible_by_k(patients: int, k: int) -> None:
    """The reference breaks here (a last cluster of N mod k); ours folds the rest into the last group."""
    assert patients % k != 0
    rng = np.random.default_rng(patients * 31 + k)
    keys = [f"p{i}" for i in range(patients)]
    result = cluster_by_patient(rng.normal(size=(patients, 4)), keys, k=k)
    assert len(result.groups) == patients // k
    assert result.patient_counts[-1] == k + patients % k
    _assert_guarantee(rng.normal(size=(patients, 4)), keys, k)


def test_repeated_patient_is_counted_once() -> None:
    """Ten images of one patient and one image of each of two others: with k=3 it is one group."""
    keys = ["a"] * 10 + ["b", "c"]
    codes = np.zeros((12, 3))
    codes[10:] = 5.0
    result = cluster_by_patient(codes, keys, k=3)
    assert result.patient_counts == (3,)
    with pytest.raises(KAnonymityError, match="3 distinct patients.*k=4"):
        cluster_by_patient(codes, keys, k=4)


def test_fewer_patients_than_k_is_refused() -> None:
    with pytest.raises(KAnonymityError, match="2 distinct patients, k-anonymity with k=5"):
        cluster_by_patient(np.zeros((6, 2)), ["a", "b"] * 3, k=5)


def test_similar_codes_are_grouped() -> None:
    """Two well-separated blobs of three patients each become the two groups for k=3."""
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.normal(0, 0.1, (3, 2)), rng.normal(10, 0.1, (3, 2))])
    result = cluster_by_patient(codes, [f"p{i}" for i in range(6)], k=3)
    assert sorted(tuple(g.indices) for g in result.groups) == [(0, 1, 2), (3, 4, 5)]


def test_labels_match_groups() -> None:
    keys = [f"p{i % 7}" for i in range(14)]
    result = cluster_by_patient(np.random.default_rng(1).normal(size=(14, 3)), keys, k=2)
    labels = result.labels()
    for gi, g in enumerate(result.groups):
        assert set(np.flatnonzero(labels == gi)) == set(g.indices)


@pytest.mark.parametrize(("codes", "keys", "k", "match"), [
    (np.zeros((3, 2)), ["a", "b"], 1, "for 2 images"),
    (np.zeros((3, 2)), ["a", "b", "c"], 0, "k: expected an integer >= 1"),
    (np.full((3, 2), np.nan), ["a", "b", "c"], 1, "finite"),
])
def test_bad_input_is_refused(codes: np.ndarray, keys: list[str], k: int, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        cluster_by_patient(codes, keys, k=k)


def test_check_catches_a_small_group() -> None:
    result = cluster_by_patient(np.random.default_rng(2).normal(size=(6, 2)), list("abcdef"), k=3)
    with pytest.raises(KAnonymityError, match="needs >= 4"):
        result.check(k=4)
