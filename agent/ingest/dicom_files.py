"""Read one DICOM file: classify it, and decode its pixels with the installed codecs.

Files are parsed from bytes already read (the pipeline opens each file read-only, hashes the
bytes and parses them here), so no DICOM library ever holds a handle on an original.

Classification (:class:`DicomRole`):

* ``SLICE``: single-frame image with Image Position/Orientation (MR, CT, ...): joins its series.
* ``ENHANCED``: multi-frame image with per-frame Plane Position (enhanced MR/CT): one volume.
* ``SEG``: DICOM Segmentation: a label for the series it references.
* ``OP``/``SC``/``IMAGE_2D``: single 2-D images (ophthalmic photography, secondary capture, others).
* ``MULTIFRAME``: other multi-frame images (cine, RT dose, enhanced without plane positions).
* ``NON_IMAGE``: no pixels and not an image SOP class (RT plan, SR, waveform, DICOMDIR).

A dataset is never logged or put in a message (its repr shows patient names).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import logging
import warnings
from typing import Iterator

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from agent.ingest.quarantine import Quarantined, Reason, scrub

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DicomRole(str, enum.Enum):
    SLICE = "slice"
    ENHANCED = "enhanced"
    SEG = "seg"
    OP = "op"
    SC = "sc"
    IMAGE_2D = "image-2d"
    MULTIFRAME = "multiframe"
    NON_IMAGE = "non-image"


@dataclasses.dataclass(frozen=True)
class FramePlane:
    """Geometry of one 2-D frame (LPS, mm)."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    thickness: float | None


@dataclasses.dataclass(frozen=True)
class DicomHeader:
    """What the pipeline needs from a header. ``patient_id`` and UIDs are real: key them, never store."""

    role: DicomRole
    modality: str
    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    rows: int
    cols: int
    frames: int
    plane: FramePlane | None  # SLICE only
    angio: bool
    referenced_series_uid: str | None  # SEG only


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value-validation warnings while ingesting, then restore the settings.

    pydicom's warnings quote element values (UIDs, names), which must never reach a log.
    """
    settings = pydicom.config.settings
    logger = logging.getLogger("pydicom")
    saved = (settings.reading_validation_mode, logger.level)
    settings.reading_validation_mode = pydicom.config.IGNORE
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        settings.reading_validation_mode, level = saved
        logger.setLevel(level)


def parse(data: bytes, *, with_pixels: bool) -> Dataset:
    """Parse DICOM bytes (with or without the 128-byte preamble).

    Raises
    ------
    Quarantined
        ``not-dicom`` if it does not parse; ``truncated-pixel-data``/``corrupt-header`` if the
        file ends inside a data element.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not with_pixels, force=data[128:132] != b"DICM")
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, NotImplementedError, OverflowError) as exc:
            raise Quarantined(Reason.NOT_DICOM, f"does not parse as DICOM ({type(exc).__name__}: {scrub(str(exc))})") from exc
    if any("End of file reached" in str(w.message) for w in caught):
        meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if _is_image_class(meta_class) and not any(k in ds for k in _PIXEL_KEYWORDS):
            raise Quarantined(Reason.TRUNCATED_PIXEL_DATA, "file ends inside the pixel data (no sequence delimiter)")
        raise Quarantined(Reason.CORRUPT_HEADER, "file ends inside a data element")
    if len(ds) == 0:
        raise Quarantined(Reason.NOT_DICOM, "no data elements after the file meta header")
    _repair_transfer_syntax(ds)
    return ds


def slice_series_uid(data: bytes) -> str | None:
    """Series UID if the bytes look like a slice of a single-frame series (cheap: no pixel data).

    Used only to group files; the full checks run when the group is ingested.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=data[128:132] != b"DICM")
        sop_class = str(ds.get("SOPClassUID", "") or "")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        is_slice = (
            frames == 1
            and sop_class != SEG_SOP_CLASS
            and not sop_class.startswith(SC_SOP_PREFIX)
            and str(ds.get("Modality", "")).upper() != "OP"
            and all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
        )
        uid = _text(ds, "SeriesInstanceUID")
    except Exception:  # any parse problem: the file is ingested alone and quarantined there
        return None
    return uid if is_slice else None


def header_of(ds: Dataset) -> DicomHeader:
    """Classify a parsed dataset and extract the fields the catalog needs.

    Raises
    ------
    Quarantined
        ``missing-pixel-data`` for an image SOP class without pixels; ``corrupt-header`` for
        unreadable numeric attributes.
    """
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    try:
        rows = int(ds.get("Rows", 0) or 0)
        cols = int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise Quarantined(Reason.CORRUPT_HEADER, f"Rows/Columns/NumberOfFrames not integers ({scrub(str(exc))})") from exc
    if not has_pixels:
        if _is_image_class(sop_class) or (rows and cols):
            raise Quarantined(Reason.MISSING_PIXEL_DATA, f"image object ({_class_name(sop_class)}) has no Pixel Data")
        role = DicomRole.NON_IMAGE
    elif sop_class == SEG_SOP_CLASS:
        role = DicomRole.SEG
    elif frames > 1:
        role = DicomRole.ENHANCED if _has_frame_planes(ds) else DicomRole.MULTIFRAME
    elif modality == "OP":
        role = DicomRole.OP
    elif sop_class.startswith(SC_SOP_PREFIX):
        role = DicomRole.SC
    elif "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds:
        role = DicomRole.SLICE
    else:
        role = DicomRole.IMAGE_2D
    plane = _slice_plane(ds) if role is DicomRole.SLICE else None
    ref_series = None
    if role is DicomRole.SEG:
        refs = ds.get("ReferencedSeriesSequence") or []
        ref_series = str(refs[0].SeriesInstanceUID) if refs and "SeriesInstanceUID" in refs[0] else None
    return DicomHeader(
        role=role,
        modality=modality,
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        rows=rows,
        cols=cols,
        frames=frames,
        plane=plane,
        angio=str(ds.get("AngioFlag", "")).upper() == "Y" or "TOF" in str(ds.get("SeriesDescription", "")).upper(),
        referenced_series_uid=ref_series,
    )


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Decode the pixel data with whatever plugin is installed (Pillow, pylibjpeg, RLE, native).

    Raises
    ------
    Quarantined
        ``unsupported-transfer-syntax`` when no installed decoder handles the transfer syntax,
        ``truncated-pixel-data`` when fewer bytes than needed are present, ``undecodable`` when a
        decoder exists but the stream is broken, ``corrupt-header`` when the pixel module is
        incomplete, ``non-finite-values`` for NaN/inf in float pixel data.
    """
    ts = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if "PixelData" in ds and ts:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            raise Quarantined(Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"no decoder for transfer syntax {ts} ({ts.name})") from exc
        if not decoder.is_available:
            raise Quarantined(
                Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"transfer syntax {ts.name} needs a codec that is not installed"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixels = ds.pixel_array
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            msg = scrub(str(exc))
            if "less than expected" in msg or "too short" in msg or "insufficient" in msg.lower():
                raise Quarantined(Reason.TRUNCATED_PIXEL_DATA, msg) from exc
            raise Quarantined(Reason.CORRUPT_HEADER, f"pixel module cannot be interpreted ({msg})") from exc
        except (RuntimeError, NotImplementedError, OSError, EOFError, IndexError) as exc:
            raise Quarantined(Reason.UNDECODABLE, f"{ts.name or 'pixel data'} stream cannot be decoded ({scrub(str(exc))[:160]})") from exc
    pixels = np.asarray(pixels)
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise Quarantined(Reason.NON_FINITE_VALUES, f"{int((~np.isfinite(pixels)).sum())} NaN/inf pixel values")
    return pixels


def rescaled(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Stored values to scanner units (Rescale Slope/Intercept) as float32."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out = pixels.astype(np.float32)
    if slope != 1 or intercept != 0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def frame_planes(ds: Dataset) -> list[FramePlane]:
    """Per-frame geometry of a multi-frame image (enhanced MR/CT, SEG) from its functional groups.

    Raises
    ------
    Quarantined
        ``inconsistent-slices`` if a frame lacks a position, or orientation/spacing are missing.
    """
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    planes: list[FramePlane] = []
    for i, frame in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
        try:
            pos = frame.PlanePositionSequence[0].ImagePositionPatient
            orient = _group_item(frame, shared, "PlaneOrientationSequence").ImageOrientationPatient
            measures = _group_item(frame, shared, "PixelMeasuresSequence")
            spacing = measures.PixelSpacing
            thickness = measures.get("SliceThickness")
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise Quarantined(Reason.INCONSISTENT_SLICES, f"frame {i + 1} lacks plane position/orientation/pixel spacing") from exc
        planes.append(
            FramePlane(
                tuple(float(v) for v in pos),  # type: ignore[arg-type]
                tuple(float(v) for v in orient),  # type: ignore[arg-type]
                (float(spacing[0]), float(spacing[1])),
                float(thickness) if thickness not in (None, "") else None,
            )
        )
    return planes


def _group_item(frame: Dataset, shared: Dataset, keyword: str) -> Dataset:
    seq = frame.get(keyword) or shared.get(keyword)
    if not seq:
        raise AttributeError(keyword)
    return seq[0]


def _has_frame_planes(ds: Dataset) -> bool:
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    return bool(groups) and all("PlanePositionSequence" in g for g in groups)


def _slice_plane(ds: Dataset) -> FramePlane:
    try:
        thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        return FramePlane(
            tuple(float(v) for v in ds.ImagePositionPatient),  # type: ignore[arg-type]
            tuple(float(v) for v in ds.ImageOrientationPatient),  # type: ignore[arg-type]
            (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            float(thickness) if thickness not in (None, "") else None,
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise Quarantined(Reason.CORRUPT_HEADER, f"image position/orientation/spacing unreadable ({scrub(str(exc))})") from exc


def _repair_transfer_syntax(ds: Dataset) -> None:
    # Raw datasets (no file meta) were parsed with a guessed encoding; tell the decoder which.
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _is_image_class(sop_class: str) -> bool:
    if not sop_class:
        return False
    name = UID(sop_class).name
    return "Image Storage" in name or "Segmentation Storage" in name or "Photography" in name


def _class_name(sop_class: str) -> str:
    return UID(sop_class).name if sop_class else "unknown SOP class"


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None
