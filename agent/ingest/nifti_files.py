"""NIfTI volumes and their label volumes.

Reading: NIfTI-1/2, plain or gzip, parsed from the bytes the pipeline already read; reoriented to
canonical RAS+ with nibabel's ``as_closest_canonical`` (voxel spacing kept) and handed out as
(z, y, x) arrays. 4-D files with more than one volume are ``unsupported-image``; NaN/inf voxels
are ``non-finite-values``.

Pairing images with labels, in this order:

1. **Manifest** (source option ``nifti_manifest``): a CSV with columns ``image,label[,patient]``,
   paths relative to the CSV's folder. A row whose label file does not exist quarantines the
   image as ``missing-label``.
2. **Naming rule** (files not in a manifest): ``<stem>.nii[.gz]`` is an image and
   ``<stem>_label.nii[.gz]`` in the same folder is its label. The patient identifier is the
   text before the first underscore of the image stem (``P001_s1_tof.nii.gz`` -> ``P001``), or
   the manifest's ``patient`` column when given.

An image without a label is catalogued (it is usable where labels are not needed); a label
without its image is an ``orphan-label``; a label whose shape or canonical affine differs from
its image's is a ``label-mismatch``.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from agent.ingest.quarantine import Quarantined, Reason, scrub
from agent.ingest.series_assembly import canonical_from_xyz

LABEL_SUFFIX = "_label"
AFFINE_ATOL_MM = 1e-3


@dataclasses.dataclass(frozen=True)
class NiftiVolume:
    data_zyx: np.ndarray
    spacing_zyx: tuple[float, float, float]
    affine_ras: np.ndarray


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    image: Path
    label: Path | None
    patient: str | None


def nifti_stem(name: str) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_label_name(name: str) -> bool:
    return nifti_stem(name).endswith(LABEL_SUFFIX)


def image_stem_of_label(name: str) -> str:
    return nifti_stem(name)[: -len(LABEL_SUFFIX)]


def patient_from_name(name: str) -> str:
    """Naming rule: the text before the first underscore of the stem (the whole stem if none)."""
    return Path(name).name.split("_", 1)[0].split(".", 1)[0]


def read_nifti(data: bytes, *, is_label: bool) -> NiftiVolume:
    """Parse NIfTI bytes into a canonical (z, y, x) volume.

    Raises
    ------
    Quarantined
        ``undecodable`` (broken gzip or header), ``truncated-pixel-data`` (fewer voxel bytes than
        the header declares), ``unsupported-image`` (not 3-D), ``non-finite-values``.
    """
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as exc:
        raise Quarantined(Reason.UNDECODABLE, f"gzip stream is broken ({scrub(str(exc))})") from exc
    klass = nib.Nifti2Image if raw[4:8] == b"n+2\x00" else nib.Nifti1Image
    try:
        img = klass.from_bytes(raw)
    except Exception as exc:  # nibabel raises many types for a bad header (HeaderDataError, ValueError, ...)
        raise Quarantined(Reason.UNDECODABLE, f"NIfTI header cannot be read ({type(exc).__name__}: {scrub(str(exc))})") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise Quarantined(Reason.UNSUPPORTED_IMAGE, f"expected a 3-D volume, got shape {tuple(shape)}")
    affine = img.affine
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise Quarantined(Reason.CORRUPT_HEADER, "NIfTI affine is missing, singular or non-finite")
    try:
        img = nib.as_closest_canonical(img)  # RAS+ voxel axes; zooms (spacing) follow the axes
        arr = np.asanyarray(img.dataobj)
    except (ValueError, OSError, EOFError) as exc:
        raise Quarantined(Reason.TRUNCATED_PIXEL_DATA, f"voxel data shorter than the header declares ({scrub(str(exc))})") from exc
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise Quarantined(Reason.NON_FINITE_VALUES, f"{int((~np.isfinite(arr)).sum())} NaN/inf voxels")
    arr = (arr > 0.5).astype(np.uint8) if is_label else arr.astype(np.float32)
    data_zyx, spacing, affine_ras = canonical_from_xyz(arr, img.affine)  # already canonical: only (x,y,z) -> (z,y,x)
    return NiftiVolume(data_zyx, spacing, affine_ras)


def same_grid(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray) -> bool:
    """True if two canonical volumes share shape and voxel-to-world mapping."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=AFFINE_ATOL_MM)


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a NIfTI manifest (``image,label[,patient]``), paths resolved against its folder.

    Raises
    ------
    Quarantined
        ``unknown-format`` if the header lacks ``image`` or ``label``.
    """
    with path.open("r", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower() for f in (reader.fieldnames or [])}
        if not {"image", "label"} <= fields:
            raise Quarantined(Reason.UNKNOWN_FORMAT, "NIfTI manifest needs columns image,label[,patient]")
        rows = []
        for raw in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            if not row.get("image"):
                continue
            label = row.get("label") or ""
            rows.append(
                ManifestRow(
                    (path.parent / row["image"]).resolve(),
                    (path.parent / label).resolve() if label else None,
                    row.get("patient") or None,
                )
            )
    return rows
