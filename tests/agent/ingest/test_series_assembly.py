"""Slice stacking rules and the canonical orientation shared by DICOM and NIfTI."""

from __future__ import annotations

import numpy as np
import pytest

from agent.ingest.cache import ArrayCache
from agent.ingest.catalog import Catalog
from agent.ingest.dicom_files import FramePlane
from agent.ingest.pipeline import run_ingest
from agent.ingest.quarantine import Quarantined
from agent.ingest.series_assembly import stack_order

from ingest_builders import mr_series, nifti, site_config

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _planes(zs, orientation=AXIAL, spacing=(0.8, 0.7)):
    normal = np.cross(orientation[:3], orientation[3:])
    return [FramePlane(tuple(np.array([1.0, 2.0, 3.0]) + z * normal), orientation, spacing, 1.0) for z in zs]


def test_slices_are_sorted_along_the_normal_whatever_the_file_order() -> None:
    zs = [3.0, 0.0, 4.5, 1.5]
    order, geometry = stack_order(_planes(zs), rows=[4] * 4, cols=[5] * 4)
    assert [zs[i] for i in order] == sorted(zs)
    assert geometry.shape_kji == (4, 4, 5)
    assert np.linalg.norm(geometry.affine_lps[:3, 2]) == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("zs", "rows", "match"),
    [
        ([0.0, 1.5, 4.5, 6.0], [4] * 4, "gap in slice positions"),
        ([0.0, 1.5, 1.5, 3.0], [4] * 4, "duplicate slice position"),
        ([0.0, 1.5, 3.0], [4, 4, 6], "different sizes"),
    ],
)
def test_irregular_stacks_are_inconsistent(zs, rows, match) -> None:
    with pytest.raises(Quarantined, match=match) as info:
        stack_order(_planes(zs), rows=rows, cols=[5] * len(zs))
    assert info.value.reason.value == "inconsistent-slices"


def test_mixed_orientation_is_inconsistent() -> None:
    planes = _planes([0.0, 1.5]) + _planes([3.0], orientation=SAGITTAL)
    with pytest.raises(Quarantined, match="different Image Orientation"):
        stack_order(planes, rows=[4] * 3, cols=[5] * 3)


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_dicom_series_and_nifti_of_one_volume_give_the_same_canonical_array(tmp_path, rng, orientation) -> None:
    vol_kji = rng.integers(0, 2000, (5, 6, 7)).astype(np.int16)
    spacing, step, origin_xy = (0.8, 0.7), 1.5, (-10.0, 5.0)
    mr_series(tmp_path / "data" / "dicom", vol_kji, patient_id="P-ORIENT", step_mm=step, spacing=spacing,
              orientation=orientation, origin_xy=origin_xy)
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    affine_lps = np.eye(4)
    affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2] = row * spacing[1], col * spacing[0], np.cross(row, col) * step
    affine_lps[:3, 3] = [origin_xy[0], origin_xy[1], 0.0]
    nifti(tmp_path / "data" / "P-ORIENT_s1_tof.nii.gz", vol_kji.transpose(2, 1, 0).astype(np.float32),
          np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)
    cfg = site_config(tmp_path, [{"path": "data"}])
    run_ingest(cfg)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        (dicom,) = catalog.live_series("dicom-series")
        (nii,) = catalog.live_series("nifti-image")
    cache = ArrayCache(cfg.state.cache)
    a, b = cache.load(dicom.cache_key), cache.load(nii.cache_key)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_allclose(a["spacing"], b["spacing"], rtol=1e-6)
    assert sorted(a["spacing"]) == pytest.approx(sorted([step, *spacing]))
    assert dicom.patient_key == nii.patient_key
