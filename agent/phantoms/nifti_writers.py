"""NIfTI encodings of TOF phantom studies: ``<PatientID>_<study>_tof.nii.gz`` plus ``..._label``.

The patient identifier is the text before the first underscore (the naming rule ingest relies on).
Arrays are stored in NIfTI's (i, j, k) = (x, y, z) order with a diagonal affine whose column norms
are the voxel spacing, so ``np.asarray(img.dataobj).transpose(2, 1, 0)`` gives back the (z, y, x)
volume. The affine places every voxel at the same physical (RAS) point as the DICOM encoding (LPS,
rows along +y, columns along +x), so a study reads back identically whichever format it was
written in. Files are gzip-compressed with a fixed header time so the same seed gives the same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from protocols.atomic_files import write_bytes_atomic
from agent.phantoms.tof_volume import TofStudy


def nifti_names(patient_id: str, study_label: str) -> tuple[str, str]:
    """File names of the image and the label for one study.

    Raises
    ------
    ValueError
        If the patient ID contains an underscore (it would break the naming rule).
    """
    if "_" in patient_id or not patient_id:
        raise ValueError(f"patient ID must be non-empty without '_' for the NIfTI naming rule, got {patient_id!r}")
    stem = f"{patient_id}_{study_label}_tof"
    return f"{stem}.nii.gz", f"{stem}_label.nii.gz"


def write_nifti_pair(folder: Path, *, patient_id: str, study_label: str, study: TofStudy) -> tuple[Path, Path]:
    """Write image (int16) and label (uint8) NIfTI files atomically; returns their paths."""
    image_name, label_name = nifti_names(patient_id, study_label)
    affine = _affine(study)
    if int(study.image.max()) > np.iinfo(np.int16).max:
        raise ValueError("TOF intensities exceed the int16 range of the NIfTI encoding")
    paths = []
    for name, array, dtype in ((image_name, study.image, np.int16), (label_name, study.label, np.uint8)):
        img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype), affine)
        img.header.set_xyzt_units(xyz="mm")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header["descrip"] = b"anonfed phantom TOF-MRA" if array is study.image else b"anonfed phantom vessel label"
        path = folder / name
        write_bytes_atomic(path, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))
        paths.append(path)
    return paths[0], paths[1]


def _affine(study: TofStudy) -> np.ndarray:
    nz, ny, nx = study.image.shape
    dz, dy, dx = study.spacing_mm
    # DICOM voxel (i, j, k) sits at LPS origin + (i dx, j dy, k dz); RAS negates x and y.
    lps_origin = -0.5 * np.array([(nx - 1) * dx, (ny - 1) * dy, (nz - 1) * dz])
    affine = np.diag([-dx, -dy, dz, 1.0])
    affine[:3, 3] = lps_origin * np.array([-1.0, -1.0, 1.0])
    return affine
