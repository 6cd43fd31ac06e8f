"""TOF phantoms: exact labels, partial volume, patient-specific geometry, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from agent.phantoms.seeding import Stream, rng_for
from agent.phantoms.tof_volume import ScannerProfile, TofGeometry, draw_tof_patient, follow_up, render_tof_study
from agent.phantoms.tubes import Tubes, partial_volume, signed_distance

GEOMETRY = TofGeometry.cube(48)
PROFILE = ScannerProfile.draw(rng_for(3, Stream.SITE, 0))


def _study(patient_index: int, *, seed: int = 3, follow_up_study: bool = False):
    patient = draw_tof_patient(rng_for(seed, Stream.TOF, 0, patient_index, 0), GEOMETRY)
    if follow_up_study:
        patient = follow_up(patient, rng_for(seed, Stream.TOF, 0, patient_index, 101))
    return render_tof_study(patient, GEOMETRY, PROFILE, rng_for(seed, Stream.TOF, 0, patient_index, 2 if follow_up_study else 1))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_label_is_centre_inside_radius_of_a_single_tube() -> None:
    # One straight tube along x, radius 2 mm, on a 1 mm grid: the label is exactly |(z, y) - c| <= 2.
    tubes = Tubes(np.array([[10.0, 10.0, 2.0]]), np.array([[10.0, 10.0, 17.0]]), np.array([2.0]), np.array([2.0]), np.array([1.0]))
    sd, value = signed_distance(tubes, shape=(21, 21, 20), spacing=(1.0, 1.0, 1.0), margin=1.0)
    z, y = np.mgrid[0:21, 0:21]
    expected = (np.hypot(z - 10.0, y - 10.0) <= 2.0)
    assert np.array_equal(sd[:, :, 10] <= 0, expected)
    assert value[10, 10, 10] == 1.0 and value[0, 0, 10] == 0.0
    fraction = partial_volume(sd, edge_width=1.0)
    assert fraction[10, 10, 10] == 1.0 and fraction[0, 0, 10] == 0.0
    assert np.any((fraction[:, :, 10] > 0.05) & (fraction[:, :, 10] < 0.95)), "no partial-volume voxels at the edge"


def test_study_is_deterministic_and_seed_sensitive() -> None:
    a, b = _study(0), _study(0)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    other = _study(0, seed=4)
    assert not np.array_equal(a.label, other.label)


def test_image_has_tof_contrast_and_partial_volume() -> None:
    study = _study(1)
    assert study.image.dtype == np.uint16 and study.label.dtype == np.uint8
    assert study.image.shape == GEOMETRY.shape and study.spacing_mm == GEOMETRY.spacing_mm
    vessel = study.image[study.label == 1].astype(float)
    head_centre = study.image[GEOMETRY.shape[0] // 2, 20:28, 20:28][study.label[GEOMETRY.shape[0] // 2, 20:28, 20:28] == 0]
    assert np.median(vessel) > 2.0 * np.median(head_centre), "vessels must be much brighter than brain tissue"
    corner = study.image[:, :3, :3].astype(float)
    assert np.median(corner) < 0.5 * np.median(head_centre), "air outside the head must be dark"
    assert 0.002 < study.label.mean() < 0.05


def test_different_patients_have_different_trees_and_a_follow_up_matches() -> None:
    labels = [_study(i).label for i in range(4)]
    between = [_dice(labels[i], labels[j]) for i in range(4) for j in range(i + 1, 4)]
    same = _dice(_study(2).label, _study(2, follow_up_study=True).label)
    assert max(between) < 0.3, between
    assert same > 0.5, same
    assert not np.array_equal(_study(2).label, _study(2, follow_up_study=True).label), "follow-up must move a little"


def test_geometry_keeps_field_of_view_when_size_changes() -> None:
    small, large = TofGeometry.cube(32), TofGeometry.cube(128)
    assert np.allclose(small.fov_mm, large.fov_mm)
    assert TofGeometry.cube(64).spacing_mm == (0.8, 0.6, 0.6)
    with pytest.raises(ValueError, match=">= 16"):
        TofGeometry.cube(8)
