"""Synthetic TOF pairs as Secondary Capture (Conversion Type SYN) + SEG: valid, marked, faithful."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.export.synthetic_marking import DEID_CODES, SYNTHETIC_PATIENT_NAME
from agent.export.tof_dicom import GREY_MAX, write_tof_pairs
from agent.export.validation import have_dciodvfy, validate_file
from protocols.errors import BadInputError

needs_dciodvfy = pytest.mark.skipif(not have_dciodvfy(), reason="dciodvfy (dicom3tools) not installed")


@needs_dciodvfy
def test_every_file_passes_dciodvfy(tmp_path: Path, generator_pairs: np.ndarray, dp_provenance) -> None:  # noqa: ANN001
    export = write_tof_pairs(generator_pairs, tmp_path, provenance=dp_provenance)
    assert len(export.images) == len(export.segmentations) == len(generator_pairs)
    for path in export.files:
        findings = validate_file(path)
        assert findings.ok, (path.name, findings.errors)
        assert findings.iod in ("SCImage", "Segmentation")


def test_images_are_marked_synthetic_and_carry_no_patient(tmp_path: Path, generator_pairs: np.ndarray, dp_provenance) -> None:  # noqa: ANN001
    export = write_tof_pairs(generator_pairs, tmp_path, provenance=dp_provenance)
    for path in export.files:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        codes = {(item.CodeValue, item.CodingSchemeDesignator) for item in ds.DeidentificationMethodCodeSequence}
        assert codes == {(value, "DCM") for value, _ in DEID_CODES}
        assert any("anonfed" in m for m in ds.DeidentificationMethod)
        assert str(ds.PatientName) == SYNTHETIC_PATIENT_NAME and ds.PatientID.startswith("SYN-")
        assert ds.PatientBirthDate == "" and ds.PatientSex == "" and ds.InstitutionName == ""
        assert "eps=7.40" in ds.SeriesDescription
    sc = pydicom.dcmread(export.images[0])
    assert sc.Modality == "MR" and sc.ConversionType == "SYN"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "NO" and sc.RecognizableVisualFeatures == "NO"
    assert "(epsilon=7.40, delta=1e-05)-DP per patient" in sc.DerivationDescription
    assert "sha256:0f0f0f0f0f0f0f0f" in sc.DerivationDescription


def test_pixels_and_labels_round_trip(tmp_path: Path, generator_pairs: np.ndarray, dp_provenance) -> None:  # noqa: ANN001
    export = write_tof_pairs(generator_pairs, tmp_path, provenance=dp_provenance)
    for pair, image_path, seg_path in zip(generator_pairs, export.images, export.segmentations):
        sc = pydicom.dcmread(image_path)
        back = sc.pixel_array.astype(np.float64) / (GREY_MAX / 2.0) - 1.0
        assert np.abs(back - pair[0]).max() <= 1.0 / GREY_MAX + 1e-6  # 12-bit quantisation only
        seg = pydicom.dcmread(seg_path)
        assert seg.SegmentSequence[0].SegmentLabel == "Blood vessel"
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "59820001"  # SCT blood vessel
        mask = seg.pixel_array.reshape(pair[1].shape)
        assert np.array_equal(mask, (pair[1] > 0).astype(np.uint8))
        ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert ref == sc.SOPInstanceUID and seg.StudyInstanceUID == sc.StudyInstanceUID


def test_uids_are_fresh_for_every_export(tmp_path: Path, generator_pairs: np.ndarray, dp_provenance) -> None:  # noqa: ANN001
    a = write_tof_pairs(generator_pairs, tmp_path / "a", provenance=dp_provenance)
    b = write_tof_pairs(generator_pairs, tmp_path / "b", provenance=dp_provenance)
    uids = []
    for path in (*a.files, *b.files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids.append(ds.SOPInstanceUID)
    assert len(set(uids)) == len(uids)
    assert a.study_uid != b.study_uid


def test_labels_thresholded_from_either_convention(tmp_path: Path, generator_pairs: np.ndarray, dp_provenance) -> None:  # noqa: ANN001
    zero_one = generator_pairs.copy()
    zero_one[:, 1] = (generator_pairs[:, 1] > 0).astype(np.float32)
    export = write_tof_pairs(zero_one, tmp_path, provenance=dp_provenance)
    seg = pydicom.dcmread(export.segmentations[0])
    assert np.array_equal(seg.pixel_array.reshape(32, 32), zero_one[0, 1].astype(np.uint8))


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (np.zeros((3, 1, 32, 32), np.float32), r"expected shape \(n, 2, S, S\)"),
        (np.zeros((3, 2, 32, 16), np.float32), r"expected shape \(n, 2, S, S\)"),
        (np.full((2, 2, 32, 32), 3.0, np.float32), r"image channel must lie in \[-1, 1\]"),
        (np.full((2, 2, 32, 32), np.nan, np.float32), "NaN"),
        (np.zeros((0, 2, 32, 32), np.float32), "expected 1..10000 patches"),
    ],
)
def test_bad_batches_are_refused(tmp_path: Path, pairs: np.ndarray, match: str, dp_provenance) -> None:  # noqa: ANN001
    with pytest.raises(BadInputError, match=match):
        write_tof_pairs(pairs, tmp_path, provenance=dp_provenance)
    assert not list(tmp_path.iterdir())
