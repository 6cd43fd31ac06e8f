"""Synthetic fundus photographs as DICOM with Modality OP, one image per file, in one of two IODs.

``FundusIod.OP`` (default): Ophthalmic Photography 8 Bit Image, what ophthalmology viewers expect.
The OP IOD has no Conversion Type, restricts Image Type value 2 to PRIMARY, and requires a
non-empty Source Image Sequence for DERIVED images; a synthetic image may not point at the real
images it came from (that would reveal a k-SALSA cluster's members), so it is written as
ORIGINAL\\PRIMARY (the generator output is its own source) and says "synthetic" in the
Derivation Description, Image Comments, series description and de-identification markers.
Acquisition attributes a camera would fill (field of view, pupil dilation) are type 2, left empty.

``FundusIod.SC``: Secondary Capture with Modality OP, Conversion Type SYN and Image Type
DERIVED\\SECONDARY: the standard's own way to say "synthetic", for sites that prefer it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, OphthalmicPhotography8BitImageStorage, generate_uid

from agent.export.files import write_dataset
from agent.export.secondary_capture import synthetic_sc_image
from agent.export.synthetic_marking import (
    SyntheticIdentity,
    SyntheticProvenance,
    mark_synthetic,
    set_patient_and_study,
)
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

LATERALITIES = ("R", "L", "B")  # OP Image Laterality: right, left, both (a cluster of both eyes)
MAX_IMAGES = 10_000
MAX_EDGE = 8192


class FundusIod(str, enum.Enum):
    """Which IOD carries a synthetic fundus image (both with Modality OP)."""

    OP = "op"  # Ophthalmic Photography 8 Bit Image
    SC = "sc"  # Secondary Capture, Conversion Type SYN


@dataclasses.dataclass(frozen=True)
class FundusExport:
    """Files written for one batch of synthetic fundus images."""

    images: tuple[Path, ...]
    study_uid: str

    @property
    def files(self) -> tuple[Path, ...]:
        return self.images


def check_images(images: np.ndarray, laterality: Sequence[str]) -> None:
    """Validate a batch: (n, H, W, 3) uint8 and one laterality R/L/B per image.

    Raises
    ------
    BadInputError
        If the array or a laterality is not acceptable.
    """
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise BadInputError(f"images: expected (n, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
    n, h, w, _ = images.shape
    if not 1 <= n <= MAX_IMAGES or not (8 <= h <= MAX_EDGE and 8 <= w <= MAX_EDGE):
        raise BadInputError(f"images: expected 1..{MAX_IMAGES} images of 8..{MAX_EDGE} px, got {n} of {h}x{w}")
    if len(laterality) != n:
        raise BadInputError(f"laterality: expected one value per image ({n}), got {len(laterality)}")
    bad = sorted({x for x in laterality if x not in LATERALITIES})
    if bad:
        raise BadInputError(f"laterality: expected R, L or B (both eyes in one cluster), got {bad[0]!r}")


def write_fundus_images(
    images: np.ndarray,
    out_dir: Path,
    *,
    provenance: SyntheticProvenance,
    laterality: Sequence[str] | str,
    identity: SyntheticIdentity | None = None,
    iod: FundusIod = FundusIod.OP,
) -> FundusExport:
    """Write each RGB image as one DICOM file (Modality OP) in one synthetic series.

    ``laterality`` is one of R/L/B for all images or one per image (k-SALSA clusters that mix eyes
    are B).

    Raises
    ------
    BadInputError
        If the batch or a laterality is invalid (see :func:`check_images`).
    """
    images = np.asarray(images)
    lats = [laterality] * len(images) if isinstance(laterality, str) else list(laterality)
    check_images(images, lats)
    identity = identity or SyntheticIdentity.fresh()
    series_uid = generate_uid()
    paths = []
    for i, (rgb, lat) in enumerate(zip(images, lats), start=1):
        make = _op_image if iod is FundusIod.OP else _sc_image
        ds = make(rgb, i, lat, series_uid, identity, provenance)
        path = Path(out_dir) / f"fundus-{i:05d}.dcm"
        write_dataset(ds, path)
        paths.append(path)
    log.info("wrote %d synthetic fundus images as OP", len(paths))
    return FundusExport(tuple(paths), identity.study_uid)


def _op_image(
    rgb: np.ndarray, number: int, laterality: str, series_uid: str, identity: SyntheticIdentity, provenance: SyntheticProvenance
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = OphthalmicPhotography8BitImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    set_patient_and_study(ds, identity)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Modality = "OP"
    ds.SeriesDescription = f"{provenance.short_label()} fundus"[:64]
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY"]  # see the module docstring for why not DERIVED
    ds.DerivationDescription = provenance.derivation_description()
    ds.ImageLaterality = laterality
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = identity.study_date, identity.study_time
    ds.AcquisitionDateTime = identity.study_date + identity.study_time  # when it was generated
    # Multi-frame, Cine and Synchronization modules are mandatory in the OP IOD even for one frame.
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 0.0
    ds.SynchronizationFrameOfReferenceUID = generate_uid()
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.LossyImageCompression = "00"
    # Acquisition parameters: type 2, empty, because no camera took this picture.
    ds.PatientEyeMovementCommanded = ""
    ds.HorizontalFieldOfView = None
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = ""
    ds.RefractiveStateSequence = []
    ds.DetectorType = "CCD"  # type 1: the modality the synthetic images imitate
    ds.AnatomicRegionSequence = [_code(codes.SCT.Eye)]
    ds.AcquisitionDeviceTypeCodeSequence = [_code(codes.SCT.FundusCamera)]
    ds.ChannelDescriptionCodeSequence = [_code(codes.SCT.Red), _code(codes.SCT.Green), _code(codes.SCT.Blue)]
    for keyword in (
        "IlluminationTypeCodeSequence",
        "LightPathFilterTypeStackCodeSequence",
        "ImagePathFilterTypeStackCodeSequence",
        "LensesCodeSequence",
        "AcquisitionContextSequence",
    ):
        setattr(ds, keyword, [])
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    mark_synthetic(ds, provenance)
    return ds


def _sc_image(
    rgb: np.ndarray, number: int, laterality: str, series_uid: str, identity: SyntheticIdentity, provenance: SyntheticProvenance
) -> Dataset:
    ds = synthetic_sc_image(
        np.ascontiguousarray(rgb, dtype=np.uint8), photometric="RGB", bits_allocated=8,
        orientation=("L", "F"),  # fundus photographs are viewed as if facing the patient
        modality="OP", description="fundus", number=number, series_uid=series_uid, identity=identity,
        provenance=provenance,
    )
    ds.Laterality = laterality if laterality in ("R", "L") else ""  # series laterality has no "both"
    return ds


def _code(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item
