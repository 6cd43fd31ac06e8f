"""The written consortium: every file parses with the standard readers and is self-consistent."""

from __future__ import annotations

import csv
import shutil
import subprocess
import re
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage, OphthalmicPhotography8BitImageStorage

from agent.config import load_site_config
from agent.phantoms.consortium import ConsortiumSummary
from agent.phantoms.dicom_writers import VESSEL_SEGMENT_LABEL
from agent.phantoms.seeding import site_prefix
from protocols.tasks import PrivacyUnit, Task

PATIENT_ID = re.compile(r"^H[A-Z]+-\d{6}$")


def _studies(summary: ConsortiumSummary, site_id: str) -> list[Path]:
    return sorted((summary.site_dir(site_id) / "tof" / "dicom").glob("study-*"))


def test_layout_and_counts(phantom_consortium: ConsortiumSummary) -> None:
    s = phantom_consortium
    assert s.site_ids == ("hospital-a", "hospital-b", "hospital-c")
    for site in s.sites:
        root = s.site_dir(site.site_id)
        assert len(_studies(s, site.site_id)) == site.tof_dicom_studies > 0
        assert len(list((root / "tof" / "nifti").glob("*_tof.nii.gz"))) == site.tof_nifti_studies > 0
        assert len(list((root / "fundus" / "dicom").glob("*.dcm"))) == site.fundus_dicom_images > 0
        assert len(list((root / "fundus" / "png").glob("*.png"))) == site.fundus_png_images > 0
        assert s.config_path(site.site_id).is_file()
        assert not list(root.rglob("*.tmp")), "temporary files must not survive"


def test_mr_series_reads_with_consistent_geometry(phantom_consortium: ConsortiumSummary) -> None:
    study = _studies(phantom_consortium, "hospital-b")[0]
    slices = [pydicom.dcmread(p) for p in sorted((study / "mr").glob("*.dcm"))]
    first = slices[0]
    assert first.SOPClassUID == MRImageStorage and first.Modality == "MR" and first.AngioFlag == "Y"
    assert PATIENT_ID.match(first.PatientID) and first.PatientID.startswith(site_prefix("hospital-b"))
    assert str(first.PatientName).startswith("Phantom^Patient")
    assert len({(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID, d.PatientID) for d in slices}) == 1
    assert len({d.SOPInstanceUID for d in slices}) == len(slices) == first.Rows
    z = np.array([float(d.ImagePositionPatient[2]) for d in sorted(slices, key=lambda d: d.InstanceNumber)])
    assert np.allclose(np.diff(z), float(first.SliceThickness))
    assert np.allclose(np.diff(z), float(first.SpacingBetweenSlices))
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([1.2, 1.2])  # 0.6 mm * 64 / 32
    assert all(d.pixel_array.dtype == np.uint16 and d.pixel_array.shape == (first.Rows, first.Columns) for d in slices)


def test_vessel_seg_reads_and_matches_the_series(phantom_consortium: ConsortiumSummary) -> None:
    study = _studies(phantom_consortium, "hospital-a")[0]
    slices = sorted((pydicom.dcmread(p) for p in (study / "mr").glob("*.dcm")), key=lambda d: d.InstanceNumber)
    seg = hd.seg.segread(study / "seg" / "vessels.dcm")
    assert seg.get_segment_numbers() == [1]
    assert seg.get_segment_description(1).segment_label == VESSEL_SEGMENT_LABEL
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in slices], segment_numbers=[1]
    )[..., 0].astype(bool)
    image = np.stack([d.pixel_array for d in slices]).astype(float)
    assert mask.shape == image.shape and 0 < mask.mean() < 0.1
    assert image[mask].mean() > 2 * image[~mask].mean()


def test_nifti_pairs_follow_the_naming_rule(phantom_consortium: ConsortiumSummary) -> None:
    folder = phantom_consortium.site_dir("hospital-c") / "tof" / "nifti"
    images = sorted(folder.glob("*_tof.nii.gz"))
    assert images
    for path in images:
        patient = path.name.split("_", 1)[0]
        assert PATIENT_ID.match(patient)
        label_path = path.with_name(path.name.replace("_tof.nii.gz", "_tof_label.nii.gz"))
        img, lab = nib.load(path), nib.load(label_path)
        assert img.shape == lab.shape == (32, 32, 32)
        assert np.allclose(img.header.get_zooms(), (1.2, 1.2, 1.6))
        assert np.allclose(img.affine, lab.affine)
        data, label = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert set(np.unique(label)) == {0, 1}
        assert data[label == 1].mean() > 2 * data[label == 0].mean()


def test_ophthalmic_photographs_are_rgb_op(phantom_consortium: ConsortiumSummary) -> None:
    for path in sorted((phantom_consortium.site_dir("hospital-a") / "fundus" / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.Modality == "OP" and ds.SOPClassUID == OphthalmicPhotography8BitImageStorage
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
        assert ds.ImageLaterality in ("L", "R") and "Laterality" not in ds
        assert ds.pixel_array.shape == (128, 128, 3) and ds.pixel_array.dtype == np.uint8


def test_grades_csv_covers_every_fundus_image(phantom_consortium: ConsortiumSummary) -> None:
    fundus = phantom_consortium.site_dir("hospital-b") / "fundus"
    with (fundus / "grades.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "grade", "patient"]
    listed = {row["file"] for row in rows}
    assert {f"png/{p.name}" for p in (fundus / "png").glob("*.png")} <= listed
    assert {f"dicom/{p.name}" for p in (fundus / "dicom").glob("*.dcm")} <= listed
    for row in rows:
        assert (fundus / row["file"]).is_file() and int(row["grade"]) in range(5)
        if row["file"].endswith(".png"):
            assert Path(row["file"]).name.split("_", 1)[0] == row["patient"]
        else:
            assert pydicom.dcmread(fundus / row["file"], stop_before_pixels=True).PatientID == row["patient"]
    per_patient = {}
    for row in rows:
        per_patient.setdefault(row["patient"], []).append(row["file"])
    assert max(len(v) for v in per_patient.values()) == 2, "some patients must have two photographs"


def test_some_patients_have_several_tof_studies(phantom_consortium: ConsortiumSummary) -> None:
    root = phantom_consortium.site_dir("hospital-a") / "tof"
    owners = [p.name.split("_", 1)[0] for p in (root / "nifti").glob("*_tof.nii.gz")]
    owners += [pydicom.dcmread(next((s / "mr").glob("*.dcm")), stop_before_pixels=True).PatientID for s in root.joinpath("dicom").glob("study-*")]
    assert len(owners) > len(set(owners)) == 3


def test_site_configs_load(phantom_consortium: ConsortiumSummary) -> None:
    for site_id in phantom_consortium.site_ids:
        cfg = load_site_config(phantom_consortium.config_path(site_id))
        assert cfg.site_id == site_id
        assert cfg.sources[0].path == phantom_consortium.site_dir(site_id).resolve()
        assert cfg.sources[0].fundus_grades_csv == (phantom_consortium.site_dir(site_id) / "fundus" / "grades.csv").resolve()
        assert cfg.state.root == (phantom_consortium.root / "state" / site_id).resolve()
        p = cfg.privacy
        assert (p.max_epsilon, p.delta, p.unit, p.min_k) == (8.0, 1e-5, PrivacyUnit.PATIENT, 5)
        assert p.accepted_tasks == {Task.DPGAN, Task.STYLEGAN_DP, Task.SYNTHESIZE, Task.KSALSA}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dicom_objects_pass_dciodvfy(phantom_consortium: ConsortiumSummary) -> None:
    site = phantom_consortium.site_dir("hospital-a")
    study = _studies(phantom_consortium, "hospital-a")[0]
    for path in (study / "mr" / "slice-0001.dcm", study / "seg" / "vessels.dcm", next((site / "fundus" / "dicom").glob("*.dcm"))):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        problems = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]
        assert not problems, (path.name, problems)
