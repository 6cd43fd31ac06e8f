"""Patch extraction: shapes, ranges, centring, head mask, patient tags, splits, npz round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.patching.head_mask import head_mask
from agent.patching.patches import PatchSet, extract_patches, scale_to_unit_range
from agent.records import LabeledVolume
from protocols.errors import BadInputError

SIZE = 16


@pytest.fixture(scope="module")
def patches(tiny_volumes: list[LabeledVolume]) -> PatchSet:
    return extract_patches(tiny_volumes, size=SIZE, per_volume=24, rng=np.random.default_rng(0))


def test_shapes_dtypes_and_value_ranges(patches: PatchSet, tiny_volumes: list[LabeledVolume]) -> None:
    assert patches.images.shape == (24 * len(tiny_volumes), 2, SIZE, SIZE) and patches.images.dtype == np.float32
    image, label = patches.images[:, 0], patches.images[:, 1]
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.max() > 0.9
    assert set(np.unique(label)) == {-1.0, 1.0}
    assert patches.patient_index.dtype == np.int64 and len(patches) == len(patches.patient_keys)


def test_half_are_vessel_centred_with_vessel_at_the_centre(patches: PatchSet) -> None:
    flags = patches.vessel_centred
    assert flags is not None and flags.sum() == len(patches) // 2
    centre = patches.images[:, 1, SIZE // 2, SIZE // 2]
    assert np.all(centre[flags] == 1.0)
    assert np.mean(centre[~flags] == 1.0) < 0.5, "random patches should rarely hit a vessel centre"


def test_random_patches_lie_inside_the_head_mask(patches: PatchSet, tiny_volumes: list[LabeledVolume]) -> None:
    per_volume = len(patches) // len(tiny_volumes)
    for v, volume in enumerate(tiny_volumes):
        mask = head_mask(volume.image)
        centres = patches.centres[v * per_volume : (v + 1) * per_volume]
        flags = patches.vessel_centred[v * per_volume : (v + 1) * per_volume]
        assert all(mask[tuple(c)] for c in centres[~flags])


def test_patches_are_cut_at_the_recorded_centre_with_padding(tiny_volumes: list[LabeledVolume]) -> None:
    volume = tiny_volumes[0]
    big = 40  # larger than the 32-voxel slice: every patch needs padding on both sides
    ps = extract_patches([volume], size=big, per_volume=6, rng=np.random.default_rng(1))
    assert ps.images.shape[2:] == (big, big)
    scaled = scale_to_unit_range(volume.image)
    for patch, (z, y, x) in zip(ps.images, ps.centres):
        assert patch[0, big // 2, big // 2] == pytest.approx(scaled[z, y, x])
        assert patch[1, big // 2, big // 2] == (1.0 if volume.label[z, y, x] else -1.0)
        assert patch[0, 0, 0] == -1.0 and patch[1, 0, 0] == -1.0  # padded corner


def test_patient_tags_follow_the_volumes(patches: PatchSet, tiny_volumes: list[LabeledVolume]) -> None:
    per_volume = len(patches) // len(tiny_volumes)
    expected = np.repeat([v.patient_key for v in tiny_volumes], per_volume)
    assert np.array_equal(patches.patient_keys, expected)
    assert patches.patients == ("tiny-p0", "tiny-p1", "tiny-p2") and patches.num_patients == 3
    assert np.array_equal(np.asarray(patches.patients)[patches.patient_index], patches.patient_keys)
    assert np.sum(patches.patient_keys == "tiny-p1") == 2 * per_volume  # two studies, one patient


def test_subset_splits_by_patient(patches: PatchSet) -> None:
    train = patches.subset(["tiny-p2", "tiny-p0"])
    test = patches.subset(["tiny-p1"])
    assert train.patients == ("tiny-p0", "tiny-p2") and test.patients == ("tiny-p1",)
    assert len(train) + len(test) == len(patches)
    assert set(train.patient_keys) & set(test.patient_keys) == set()
    assert np.array_equal(np.asarray(train.patients)[train.patient_index], train.patient_keys)
    with pytest.raises(BadInputError, match="not in this patch set"):
        patches.subset(["tiny-p9"])


def test_same_rng_state_same_patches(tiny_volumes: list[LabeledVolume]) -> None:
    a = extract_patches(tiny_volumes, size=SIZE, per_volume=8, rng=np.random.default_rng(5))
    b = extract_patches(tiny_volumes, size=SIZE, per_volume=8, rng=np.random.default_rng(5))
    c = extract_patches(tiny_volumes, size=SIZE, per_volume=8, rng=np.random.default_rng(6))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.centres, b.centres)
    assert not np.array_equal(a.centres, c.centres)


def test_vessel_fraction_is_respected(tiny_volumes: list[LabeledVolume]) -> None:
    ps = extract_patches(tiny_volumes[:1], size=SIZE, per_volume=10, vessel_fraction=0.2, rng=np.random.default_rng(0))
    assert ps.vessel_centred.sum() == 2
    none = extract_patches(tiny_volumes[:1], size=SIZE, per_volume=10, vessel_fraction=0.0, rng=np.random.default_rng(0))
    assert not none.vessel_centred.any()


def test_npz_round_trip_without_pickles(patches: PatchSet, tmp_path: Path) -> None:
    path = tmp_path / "patches.npz"
    patches.save_npz(path)
    loaded = PatchSet.load_npz(path)
    assert np.array_equal(loaded.images, patches.images)
    assert np.array_equal(loaded.patient_keys, patches.patient_keys) and loaded.patients == patches.patients
    assert np.array_equal(loaded.centres, patches.centres) and np.array_equal(loaded.vessel_centred, patches.vessel_centred)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_load_rejects_foreign_and_pickled_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, images=np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(BadInputError, match="not an anonfed patch set"):
        PatchSet.load_npz(foreign)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format=np.array("anonfed-patchset-1"), images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadInputError, match="cannot load"):
        PatchSet.load_npz(pickled)


def test_empty_vessel_label_falls_back_to_head_patches(tiny_volumes: list[LabeledVolume], caplog: pytest.LogCaptureFixture) -> None:
    blank = dataclasses.replace(tiny_volumes[0], label=np.zeros_like(tiny_volumes[0].label))
    ps = extract_patches([blank], size=SIZE, per_volume=6, rng=np.random.default_rng(0))
    assert not ps.vessel_centred.any() and len(ps) == 6
    assert "empty vessel label" in caplog.text


@pytest.mark.parametrize(("kwargs", "match"), [({"size": 1}, "size >= 2"), ({"per_volume": 0}, "per_volume >= 1"), ({"vessel_fraction": 1.5}, "vessel_fraction")])
def test_bad_arguments(tiny_volumes: list[LabeledVolume], kwargs: dict, match: str) -> None:
    args = {"size": SIZE, "per_volume": 4, "vessel_fraction": 0.5} | kwargs
    with pytest.raises(BadInputError, match=match):
        extract_patches(tiny_volumes, rng=np.random.default_rng(0), **args)
    with pytest.raises(BadInputError, match="no volumes"):
        extract_patches([], size=SIZE, per_volume=4, rng=np.random.default_rng(0))


def test_patchset_rejects_inconsistent_arrays() -> None:
    images = np.zeros((2, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="disagree"):
        PatchSet(images, np.array(["a", "b"]), np.array([0, 0], np.int64), ("a", "b"))
    with pytest.raises(ValueError, match="float32"):
        PatchSet(images.astype(np.float64), np.array(["a", "b"]), np.array([0, 1], np.int64), ("a", "b"))


@settings(max_examples=25, deadline=None)
@given(size=st.integers(2, 41), per_volume=st.integers(1, 9), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_any_size_gives_square_patches_centred_on_their_voxel(tiny_volumes: list[LabeledVolume], size: int,
                                                              per_volume: int, fraction: float, seed: int) -> None:
    volume = tiny_volumes[2]
    ps = extract_patches([volume], size=size, per_volume=per_volume, vessel_fraction=fraction, rng=np.random.default_rng(seed))
    assert ps.images.shape == (per_volume, 2, size, size)
    assert ps.vessel_centred.sum() == round(per_volume * fraction)
    scaled = scale_to_unit_range(volume.image)
    for patch, (z, y, x) in zip(ps.images, ps.centres):
        assert patch[0, size // 2, size // 2] == scaled[z, y, x]
