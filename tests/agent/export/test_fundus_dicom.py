"""Synthetic fundus images with Modality OP (OP IOD or SC with Conversion Type SYN): valid and marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.export.fundus_dicom import FundusIod, write_fundus_images
from agent.export.validation import have_dciodvfy, validate_file
from protocols.errors import BadInputError


def _lats(n: int) -> list[str]:
    assert n >= 3, "the fixture must give at least 3 group averages"
    return (["R", "L", "B"] * n)[:n]


@pytest.mark.skipif(not have_dciodvfy(), reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("iod", list(FundusIod))
def test_every_file_passes_dciodvfy(tmp_path: Path, averaged_fundus: np.ndarray, ksalsa_provenance, iod: FundusIod) -> None:  # noqa: ANN001
    export = write_fundus_images(averaged_fundus, tmp_path, provenance=ksalsa_provenance, laterality=_lats(len(averaged_fundus)), iod=iod)
    for path in export.files:
        findings = validate_file(path)
        assert findings.ok, (path.name, findings.errors)
    assert findings.iod == ("OphthalmicPhotography8BitImage" if iod is FundusIod.OP else "SCImage")


@pytest.mark.parametrize("iod", list(FundusIod))
def test_pixels_laterality_and_markers(tmp_path: Path, averaged_fundus: np.ndarray, ksalsa_provenance, iod: FundusIod) -> None:  # noqa: ANN001
    export = write_fundus_images(averaged_fundus, tmp_path, provenance=ksalsa_provenance, laterality=_lats(len(averaged_fundus)), iod=iod)
    for i, path in enumerate(export.files):
        ds = pydicom.dcmread(path)
        assert ds.Modality == "OP"
        assert np.array_equal(ds.pixel_array, averaged_fundus[i])
        assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
        assert "k-anonymity, every image averages >= 3 distinct patients" in ds.DerivationDescription
        assert "k=3" in ds.SeriesDescription and "not an image of any real patient" in ds.ImageComments
    first, third = (pydicom.dcmread(export.files[i], stop_before_pixels=True) for i in (0, 2))
    if iod is FundusIod.OP:
        assert first.ImageLaterality == "R" and third.ImageLaterality == "B"
    else:
        assert first.ConversionType == "SYN" and list(first.ImageType) == ["DERIVED", "SECONDARY"]
        assert first.Laterality == "R" and third.Laterality == ""


@pytest.mark.parametrize(
    ("images", "laterality", "match"),
    [
        (np.zeros((2, 64, 64), np.uint8), "R", r"expected \(n, H, W, 3\) uint8"),
        (np.zeros((2, 64, 64, 3), np.float32), "R", r"expected \(n, H, W, 3\) uint8"),
        (np.zeros((2, 64, 64, 3), np.uint8), ["R"], "one value per image"),
        (np.zeros((2, 64, 64, 3), np.uint8), "X", "expected R, L or B"),
    ],
)
def test_bad_batches_are_refused(tmp_path: Path, images: np.ndarray, laterality, match: str, ksalsa_provenance) -> None:  # noqa: ANN001
    with pytest.raises(BadInputError, match=match):
        write_fundus_images(images, tmp_path, provenance=ksalsa_provenance, laterality=laterality)
