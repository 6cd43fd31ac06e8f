"""Synthetic TOF-MRA image+label patches as DICOM: a Secondary Capture series plus one SEG.

Each patch becomes one single-frame Secondary Capture image (Modality MR, Conversion Type SYN,
Image Type DERIVED\\SECONDARY, 12-bit grey values in 16-bit words) and one DICOM Segmentation
(segment "Blood vessel") that references it; the images form one series, the labels another.
One SEG per image, because a SEG over images without a Frame of Reference (the SC IOD has none)
may hold only one frame. The SC IOD has no MR Image module, so Angio Flag is not written (the series says TOF in
its description instead). All markers of :mod:`agent.export.synthetic_marking` are applied.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from agent.export.files import write_dataset
from agent.export.secondary_capture import synthetic_sc_image
from agent.export.synthetic_marking import (
    MANUFACTURER,
    SyntheticIdentity,
    SyntheticProvenance,
    agent_version,
    mark_synthetic,
    set_patient_and_study,
)
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

GREY_MAX = 4095  # 12 significant bits, like MR scanners write
MAX_PATCHES = 10_000
MAX_PATCH_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class TofExport:
    """Files written for one batch of synthetic TOF pairs."""

    images: tuple[Path, ...]
    segmentations: tuple[Path, ...]  # segmentations[i] labels images[i]
    study_uid: str

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.images, *self.segmentations)


def check_pairs(pairs: np.ndarray) -> None:
    """Validate a batch of pairs: (n, 2, S, S), finite, image in [-1, 1].

    Raises
    ------
    BadInputError
        If the shape, size or values are not those of generator output.
    """
    if pairs.ndim != 4 or pairs.shape[1] != 2 or pairs.shape[2] != pairs.shape[3]:
        raise BadInputError(f"pairs: expected shape (n, 2, S, S) (channel 0 image, 1 label), got {pairs.shape}")
    n, _, s, _ = pairs.shape
    if not 1 <= n <= MAX_PATCHES or not 4 <= s <= MAX_PATCH_SIZE:
        raise BadInputError(f"pairs: expected 1..{MAX_PATCHES} patches of 4..{MAX_PATCH_SIZE} px, got {n} of {s} px")
    if not np.isfinite(pairs).all():
        raise BadInputError("pairs: contains NaN or infinite values; the generator output is broken")
    lo, hi = float(pairs[:, 0].min()), float(pairs[:, 0].max())
    if lo < -1.0001 or hi > 1.0001:
        raise BadInputError(f"pairs: image channel must lie in [-1, 1] (generator tanh output), got [{lo:.3f}, {hi:.3f}]")


def to_grey(image: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to 0..4095 unsigned 16-bit grey values."""
    return np.rint((np.clip(image, -1.0, 1.0) + 1.0) * (GREY_MAX / 2.0)).astype(np.uint16)


def to_mask(label: np.ndarray) -> np.ndarray:
    """Label channel ({-1, 1} from the generator, or {0, 1}) to a binary mask (threshold 0)."""
    return (label > 0).astype(np.uint8)


def write_tof_pairs(
    pairs: np.ndarray,
    out_dir: Path,
    *,
    provenance: SyntheticProvenance,
    identity: SyntheticIdentity | None = None,
) -> TofExport:
    """Write ``pairs`` as a Secondary Capture series (one image per patch) and one SEG.

    Raises
    ------
    BadInputError
        If ``pairs`` is not a valid batch (see :func:`check_pairs`).
    """
    pairs = np.asarray(pairs, dtype=np.float32)
    check_pairs(pairs)
    identity = identity or SyntheticIdentity.fresh()
    out_dir = Path(out_dir)
    image_series, seg_series = generate_uid(), generate_uid()
    image_paths: list[Path] = []
    seg_paths: list[Path] = []
    for i, pair in enumerate(pairs, start=1):
        sc = _sc_image(to_grey(pair[0]), i, image_series, identity, provenance)
        seg = _segmentation(sc, to_mask(pair[1]), i, seg_series, identity, provenance)
        image_paths.append(out_dir / f"tof-{i:05d}-image.dcm")
        seg_paths.append(out_dir / f"tof-{i:05d}-label.dcm")
        write_dataset(sc, image_paths[-1])
        write_dataset(seg, seg_paths[-1])
    log.info("wrote %d synthetic TOF patches as SC + SEG", len(image_paths))
    return TofExport(tuple(image_paths), tuple(seg_paths), identity.study_uid)


def _sc_image(grey: np.ndarray, number: int, series_uid: str, identity: SyntheticIdentity, provenance: SyntheticProvenance) -> Dataset:
    sc = synthetic_sc_image(
        grey, photometric="MONOCHROME2", bits_allocated=16,
        orientation=("L", "P"),  # axial patches, as the training patches were cut
        modality="MR", description="TOF", number=number, series_uid=series_uid, identity=identity,
        provenance=provenance,
    )
    sc.Laterality = ""  # type 2C in General Series: brain patches have no laterality
    sc.BitsStored, sc.HighBit = 12, 11
    sc.WindowCenter, sc.WindowWidth = GREY_MAX // 2 + 1, GREY_MAX + 1
    return sc


def _segmentation(
    image: Dataset, mask: np.ndarray, number: int, series_uid: str, identity: SyntheticIdentity, provenance: SyntheticProvenance
) -> Dataset:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"anonfed {provenance.method.value}",
        version=agent_version(),
        family=codes.cid7162.ArtificialIntelligence,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Blood vessel",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.BloodVessel,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid,
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"anonfed {provenance.method.value}",
        software_versions=agent_version(),
        device_serial_number="none",
        content_label="VESSELS",
        content_description="Synthetic vessel labels generated jointly with the images"[:64],
        omit_empty_frames=False,  # an empty label is still the label of its image
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    set_patient_and_study(seg, identity)
    seg.SeriesDescription = f"{provenance.short_label()} vessel labels"[:64]
    seg.PatientOrientation = ["L", "P"]  # type 2C: the SC sources have no Image Orientation (Patient)
    seg.ImageComments = provenance.derivation_description()[:10240]
    mark_synthetic(seg, provenance, burned_in=False)
    return seg
