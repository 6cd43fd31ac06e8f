"""DICOM Segmentation (SEG) objects as vessel labels for the series they reference.

A SEG is decoded once into its frames (binary or fractional, any segment) and the position of
each frame; the ingest caches that. Pairing then places every frame on the slice of the
referenced series whose position it matches (projected on the series' slice normal, in-plane
origin and size checked), and takes the union of all segments as the vessel label (value 1).
A frame that falls between slices or outside the volume, a different orientation or matrix size
is a ``label-mismatch``; a SEG whose referenced series is not in the catalog is an ``orphan-label``.

A SEG of 2-D images (:func:`is_image_seg`: no frame has a plane position, because its sources,
such as Secondary Capture images, have no patient geometry) is matched by reference instead:
each frame names the SOP instance it was derived from (per-frame Derivation Image Sequence, or
the SEG's single referenced instance), and the label of an image is the union of its frames.
The agent's own synthetic TOF export writes exactly such pairs (one SC image, one SEG each).
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


def is_image_seg(ds: Dataset) -> bool:
    """True if the SEG labels 2-D images: no frame (and no shared group) has a plane position.

    A SEG of a volume always carries per-frame positions; one whose sources have no Image
    Position (Patient) (Secondary Capture, most 2-D images) cannot, and is paired by reference.
    """
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    return "PlanePositionSequence" not in shared and not any("PlanePositionSequence" in g for g in groups)


def image_seg_frames(ds: Dataset) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode a SEG of 2-D images: ``frames`` (n, rows, cols) uint8 {0,1} for the cache, and the
    SOP Instance UID each frame labels (real UIDs: key them before storing).

    Raises
    ------
    Quarantined
        As :func:`decode_pixels`; ``orphan-label`` if a frame does not say which image it labels;
        ``label-mismatch`` if a frame is derived from more than one image.
    """
    pixels = decode_pixels(ds)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise Quarantined(Reason.LABEL_MISMATCH, f"SEG pixel data has shape {pixels.shape}, expected (frames, rows, columns)")
    groups = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    fallback = _single_referenced_instance(ds)
    sources: list[str] = []
    for i in range(pixels.shape[0]):
        refs = _derivation_sources(groups[i]) if i < len(groups) else set()
        if len(refs) > 1:
            raise Quarantined(Reason.LABEL_MISMATCH, f"SEG frame {i + 1} is derived from {len(refs)} images; a 2-D label must come from one")
        if not refs and fallback is None:
            raise Quarantined(Reason.ORPHAN_LABEL, f"SEG frame {i + 1} does not say which image it labels "
                              "(no Derivation Image Sequence and not exactly one referenced instance)")
        sources.append(refs.pop() if refs else fallback)  # type: ignore[arg-type]
    return {"frames": (pixels > 0).astype(np.uint8)}, sources


def _derivation_sources(frame: Dataset) -> set[str]:
    uids: set[str] = set()
    for derivation in frame.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            uid = str(source.get("ReferencedSOPInstanceUID", "") or "").strip()
            if uid:
                uids.add(uid)
    return uids


def _single_referenced_instance(ds: Dataset) -> str | None:
    """The one image the whole SEG references (Referenced Series or Source Image Sequence), if one."""
    uids: set[str] = set()
    for series in ds.get("ReferencedSeriesSequence") or []:
        for item in series.get("ReferencedInstanceSequence") or []:
            uids.add(str(item.get("ReferencedSOPInstanceUID", "") or "").strip())
    for item in ds.get("SourceImageSequence") or []:
        uids.add(str(item.get("ReferencedSOPInstanceUID", "") or "").strip())
    uids.discard("")
    return uids.pop() if len(uids) == 1 else None


def label_for_image(seg: dict[str, np.ndarray], frame_indices: list[int], image_shape: tuple[int, ...]) -> np.ndarray:
    """Label (rows, cols) uint8 of one 2-D image: the union of the SEG frames derived from it.

    Raises
    ------
    Quarantined
        ``label-mismatch`` if the image is not a grey-level 2-D image or its size differs from the frames.
    """
    frames = seg["frames"]
    if len(image_shape) != 2:
        raise Quarantined(Reason.LABEL_MISMATCH, f"SEG references an image of shape {tuple(image_shape)}; "
                          "a 2-D label needs a single-frame grey-level image")
    if frames.shape[1:] != tuple(image_shape):
        raise Quarantined(Reason.LABEL_MISMATCH, f"SEG frames are {frames.shape[1:]} but the image they reference is {tuple(image_shape)}")
    return np.bitwise_or.reduce(frames[frame_indices], axis=0).astype(np.uint8)
