"""Builders for small test inputs: site configs, DICOM MR slices, NIfTI volumes, PNG images.

Imported by the ingest tests as ``ingest_builders`` (this folder is put on ``sys.path`` by the
folder's conftest.py; the name is unique so it cannot shadow another area's helpers).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import yaml
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from agent.config import SiteConfig, load_site_config


def write_config(folder: Path, sources: list[dict], *, state: Path | None = None, **ingest) -> Path:
    """Write ``folder/site.yaml`` with the given sources (paths absolute or relative to ``folder``)."""
    raw = {
        "site_id": "test-site",
        "sources": sources,
        "state_dir": str(state or folder / "state"),
        "privacy": {"max_epsilon": 8.0, "delta": 1e-5},
    }
    if ingest:
        raw["ingest"] = ingest
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def site_config(folder: Path, sources: list[dict], **kwargs) -> SiteConfig:
    return load_site_config(write_config(folder, sources, **kwargs))


def mr_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    z_mm: float,
    sop_uid: str | None = None,
    spacing: tuple[float, float] = (0.8, 0.7),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    origin_xy: tuple[float, float] = (-10.0, 5.0),
) -> Path:
    """Write one single-frame MR slice (int16, explicit VR little endian)."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.AngioFlag = "Y"
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [float(v) for v in np.array([origin_xy[0], origin_xy[1], 0.0]) + z_mm * normal]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.SliceThickness = 1.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def mr_series(
    folder: Path,
    volume_kji: np.ndarray,
    *,
    patient_id: str,
    step_mm: float = 1.5,
    skip: Iterable[int] = (),
    repeat_position: int | None = None,
    **kwargs,
) -> list[Path]:
    """Write a volume as slices ``slice-KKK.dcm`` (``skip`` leaves gaps; ``repeat_position`` puts
    an extra, different instance at the position of that slice)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for k, plane in enumerate(volume_kji):
        if k in set(skip):
            continue
        paths.append(mr_slice(folder / f"slice-{k:03d}.dcm", plane, patient_id=patient_id, study_uid=study_uid,
                              series_uid=series_uid, z_mm=k * step_mm, **kwargs))
    if repeat_position is not None:
        paths.append(mr_slice(folder / "slice-extra.dcm", volume_kji[repeat_position] + 1, patient_id=patient_id,
                              study_uid=study_uid, series_uid=series_uid, z_mm=repeat_position * step_mm, **kwargs))
    return paths


def nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data_xyz, np.eye(4) if affine is None else affine), str(path))
    return path


def png(path: Path, rng: np.random.Generator, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def tree_hashes(root: Path) -> dict[Path, str]:
    """sha256 of every regular file under ``root`` (symlinks not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
