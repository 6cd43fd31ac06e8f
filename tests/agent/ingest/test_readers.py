"""NIfTI and fundus readers: failure modes and the naming rules."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from agent.ingest.fundus_files import read_fundus, read_grades
from agent.ingest.nifti_files import image_stem_of_label, is_label_name, patient_from_name, read_nifti
from agent.ingest.quarantine import Quarantined, Reason


def _nifti_bytes(data: np.ndarray, affine=None) -> bytes:
    return nib.Nifti1Image(data, np.diag([-1.0, 2.0, 3.0, 1.0]) if affine is None else affine).to_bytes()


def test_nifti_is_reoriented_to_ras_with_spacing_kept() -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (x, y, z), x runs to the left
    vol = read_nifti(_nifti_bytes(data), is_label=False)
    assert vol.spacing_zyx == (3.0, 2.0, 1.0)
    np.testing.assert_array_equal(vol.data_zyx, data[::-1].transpose(2, 1, 0))


@pytest.mark.parametrize(
    ("make", "reason", "match"),
    [
        (lambda raw: raw[:-100], Reason.TRUNCATED_PIXEL_DATA, "shorter than the header"),
        (lambda raw: gzip.compress(raw)[:-50], Reason.UNDECODABLE, "gzip stream is broken"),
        (lambda raw: raw[:200], Reason.UNDECODABLE, "header cannot be read"),
    ],
)
def test_damaged_nifti_is_quarantined(make, reason, match) -> None:
    with pytest.raises(Quarantined, match=match) as info:
        read_nifti(make(_nifti_bytes(np.ones((8, 8, 8), np.float32))), is_label=False)
    assert info.value.reason is reason


def test_time_series_and_non_finite_are_refused() -> None:
    with pytest.raises(Quarantined, match="expected a 3-D volume") as info:
        read_nifti(_nifti_bytes(np.ones((4, 4, 4, 3), np.float32)), is_label=False)
    assert info.value.reason is Reason.UNSUPPORTED_IMAGE
    inf = np.ones((4, 4, 4), np.float32)
    inf[0, 0, 0] = np.inf
    with pytest.raises(Quarantined, match="1 NaN/inf") as info:
        read_nifti(_nifti_bytes(inf), is_label=False)
    assert info.value.reason is Reason.NON_FINITE_VALUES


def test_naming_rule() -> None:
    assert is_label_name("P001_s1_tof_label.nii.gz") and not is_label_name("P001_s1_tof.nii.gz")
    assert image_stem_of_label("P001_s1_tof_label.nii") == "P001_s1_tof"
    assert patient_from_name("P001_s1_tof") == "P001" and patient_from_name("anatomical") == "anatomical"


def test_fundus_jpeg_grey_png_and_truncation() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    assert read_fundus(buf.getvalue()).shape == (40, 50, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(buf, format="PNG")
    grey = read_fundus(buf.getvalue())
    assert grey.shape == (40, 50, 3) and np.array_equal(grey[..., 1], rgb[..., 0])
    with pytest.raises(Quarantined, match="cannot be decoded") as info:
        read_fundus(buf.getvalue()[:100])
    assert info.value.reason is Reason.UNDECODABLE


def test_grades_csv_rows(tmp_path) -> None:
    for name in ("A1_L.png", "A2_R.png", "A3_L.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "grades.csv").write_text("file,grade,patient\nA1_L.png,3,\nA2_R.png,5,P-2\nA3_L.png,2,P-3\nmissing.png,1,\n")
    good, bad = read_grades(tmp_path / "grades.csv")
    assert {p.name: (g.grade, g.patient) for p, g in good.items()} == {"A1_L.png": (3, None), "A3_L.png": (2, "P-3")}
    assert [(b.path.name, b.reason) for b in bad] == [("A2_R.png", Reason.BAD_GRADE), ("missing.png", Reason.ORPHAN_LABEL)]
    assert "P-2" not in bad[0].detail
