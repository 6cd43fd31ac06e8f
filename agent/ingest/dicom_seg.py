"""DICOM Segmentation (SEG) objects as vessel labels for the series they reference.

A SEG is decoded once into its frames (binary or fractional, any segment) and the position of
each frame; the ingest caches that. Pairing then places every frame on the slice of the
referenced series whose position it matches (projected on the series' slice normal, in-plane
origin and size checked), and takes the union of all segments as the vessel label (value 1).
A frame that falls between slices or outside the volume, a different orientation or matrix size
is a ``label-mismatch``; a SEG whose referenced series is not in the catalog is an ``orphan-label``.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from agent.ingest.dicom_files import decode_pixels, frame_planes
from agent.ingest.quarantine import Quarantined, Reason
from agent.ingest.series_assembly import StackGeometry

_POSITION_TOL = 0.25  # fraction of slice step / pixel spacing


def seg_frames(ds: Dataset) -> dict[str, np.ndarray]:
    """Decode a SEG into cacheable arrays: ``frames`` (n, rows, cols) uint8 {0,1}, ``positions``
    (n, 3) LPS mm and ``orientation`` (6,).

    Raises
    ------
    Quarantined
        As :func:`decode_pixels`, or ``label-mismatch`` if the frame count and per-frame geometry
        disagree.
    """
    pixels = decode_pixels(ds)
    if pixels.ndim == 2:
        pixels = pixels[None]
    planes = frame_planes(ds)
    if len(planes) != pixels.shape[0]:
        raise Quarantined(Reason.LABEL_MISMATCH, f"SEG has {pixels.shape[0]} frames but {len(planes)} frame positions")
    return {
        "frames": (pixels > 0).astype(np.uint8),
        "positions": np.asarray([p.position for p in planes], dtype=float),
        "orientation": np.asarray(planes[0].orientation, dtype=float) if planes else np.zeros(6),
    }


def label_for_stack(seg: dict[str, np.ndarray], geometry: StackGeometry) -> np.ndarray:
    """Label volume (k, j, i) uint8 aligned with the referenced series.

    Raises
    ------
    Quarantined
        ``label-mismatch`` if a frame does not sit exactly on a slice of the series.
    """
    n_slices, rows, cols = geometry.shape_kji
    frames = seg["frames"]
    if frames.shape[1:] != (rows, cols):
        raise Quarantined(Reason.LABEL_MISMATCH, f"SEG frames are {frames.shape[1:]} but the series slices are {(rows, cols)}")
    affine = geometry.affine_lps
    inv = np.linalg.inv(affine)
    orient = np.concatenate([affine[:3, 0] / np.linalg.norm(affine[:3, 0]), affine[:3, 1] / np.linalg.norm(affine[:3, 1])])
    if np.abs(seg["orientation"] - orient).max() > 1e-3:
        raise Quarantined(Reason.LABEL_MISMATCH, "SEG orientation differs from the referenced series")
    label = np.zeros(geometry.shape_kji, dtype=np.uint8)
    for frame, pos in zip(frames, seg["positions"]):
        ijk = inv @ np.append(pos, 1.0)
        k = int(round(ijk[2]))
        if abs(ijk[2] - k) > _POSITION_TOL or abs(ijk[0]) > _POSITION_TOL or abs(ijk[1]) > _POSITION_TOL:
            raise Quarantined(Reason.LABEL_MISMATCH, "a SEG frame does not lie on a slice of the referenced series")
        if not 0 <= k < n_slices:
            raise Quarantined(Reason.LABEL_MISMATCH, f"a SEG frame lies outside the referenced series (slice {k} of {n_slices})")
        label[k] |= frame
    return label
