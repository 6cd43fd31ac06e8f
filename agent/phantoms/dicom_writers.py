"""DICOM encodings of phantom studies: MR single-frame series, vessel SEG, ophthalmic photographs.

The datasets carry realistic but FAKE identities (``HA-004711``, ``Phantom^Patient07``) and UIDs
that are pure functions of the consortium seed, so the same seed writes byte-identical files. Nothing
here reads the clock: dates come from :class:`DicomIdentity`.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid, MRImageStorage, OphthalmicPhotography8BitImageStorage, PYDICOM_IMPLEMENTATION_UID

from protocols.atomic_files import write_bytes_atomic
from agent.phantoms.fundus_image import FundusRender
from agent.phantoms.seeding import UID_PREFIX
from agent.phantoms.tof_volume import TofStudy

MANUFACTURER = "anonfed phantom generator"
SOFTWARE_VERSION = "anonfed-phantoms 1"
VESSEL_SEGMENT_LABEL = "Blood vessel"


@dataclasses.dataclass(frozen=True)
class DicomIdentity:
    """Patient, study and series attributes of one written object (all fake, all deterministic)."""

    patient_id: str
    patient_name: str
    patient_birth_date: str  # YYYYMMDD
    patient_sex: str  # "F", "M" or "O"
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str
    institution: str
    instance_uid_key: str  # SOP Instance UIDs are hashed from it and the instance number


def instance_uid(ident: DicomIdentity, instance: int) -> str:
    """Deterministic SOP Instance UID of instance number ``instance`` of the identified series."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[ident.instance_uid_key, str(instance)]))


def save_dataset(ds: Dataset, path: Path) -> None:
    """Encode ``ds`` as a DICOM file (preamble + meta) and write it atomically."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    write_bytes_atomic(path, buffer.getvalue())


def mr_series(study: TofStudy, ident: DicomIdentity) -> list[Dataset]:
    """One MR Image Storage dataset per axial slice of ``study`` (slice k at z = z0 + k * dz).

    The volume is centred on the scanner origin; rows run along +y and columns along +x (LPS), so
    stacking the slices by ImagePositionPatient[2] gives back the (z, y, x) array.
    """
    nz, ny, nx = study.image.shape
    dz, dy, dx = study.spacing_mm
    origin = -0.5 * np.array([(nx - 1) * dx, (ny - 1) * dy, (nz - 1) * dz])
    window_centre = float(np.percentile(study.image, 99.5)) / 2
    slices = []
    for k in range(nz):
        ds = _base_dataset(ident, sop_class=MRImageStorage, modality="MR", instance=k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.SeriesDescription = "TOF 3D multi-slab"
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = ["SP", "OSP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.AngioFlag = "Y"
        ds.RepetitionTime = 22.0
        ds.EchoTime = 3.6
        ds.FlipAngle = 18.0
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3.0
        ds.ImagedNucleus = "1H"
        # Decimal strings are at most 16 characters: round geometry to 0.1 micrometre.
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(origin[2] + k * dz)]
        ds.SliceLocation = _ds(origin[2] + k * dz)
        ds.FrameOfReferenceUID = ident.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.AcquisitionNumber = 1
        ds.WindowCenter = round(window_centre, 1)
        ds.WindowWidth = round(2 * window_centre, 1)
        _set_pixels(ds, study.image[k], photometric="MONOCHROME2", bits=16)
        slices.append(ds)
    return slices


def vessel_seg(source_slices: list[Dataset], label: np.ndarray, ident: DicomIdentity) -> Dataset:
    """A binary DICOM SEG with one segment "Blood vessel" referencing ``source_slices``.

    The label is the phantom's exact ground truth; MANUAL is the segment algorithm type that needs
    no algorithm identification, and the content label says where it comes from.
    """
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=VESSEL_SEGMENT_LABEL,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.BloodVessel,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=source_slices,
        pixel_array=label.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=ident.series_uid,
        series_number=100,
        sop_instance_uid=instance_uid(ident, 1),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="TOF vessel phantom",
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        content_label="PHANTOM_TRUTH",
        content_description="exact vessel mask of the phantom geometry",
        omit_empty_frames=False,
    )
    _make_reproducible(seg, ident)
    return seg


def _make_reproducible(seg: Dataset, ident: DicomIdentity) -> None:
    """Replace the clock times and random UIDs highdicom stamps, so the same seed gives the same file."""
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        setattr(seg, keyword, ident.study_date)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        setattr(seg, keyword, ident.study_time)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{ident.study_date}{ident.study_time}"
    dimension_uid = instance_uid(ident, 0)  # instance numbers start at 1: 0 is free for this
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = dimension_uid


def ophthalmic_photograph(render: FundusRender, ident: DicomIdentity, *, laterality: str) -> Dataset:
    """Ophthalmic Photography 8 Bit Image (Modality OP), RGB, single frame, with image laterality."""
    ds = _base_dataset(ident, sop_class=OphthalmicPhotography8BitImageStorage, modality="OP", instance=1)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDescription = "Colour fundus 45 deg"
    ds.ImageLaterality = laterality  # image-level; series-level Laterality is not allowed alongside it
    ds.PatientOrientation = ""
    ds.SynchronizationFrameOfReferenceUID = ident.frame_of_reference_uid
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00181063  # FrameTime, required pointer for a multi-frame-capable IOD
    ds.FrameTime = 0.0
    ds.AcquisitionDateTime = f"{ident.study_date}{ident.study_time}"
    ds.ContentDate, ds.ContentTime = ident.study_date, ident.study_time
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PatientEyeMovementCommanded = "NO"
    ds.HorizontalFieldOfView = 45.0
    ds.EmmetropicMagnification = 1.0
    ds.IntraOcularPressure = 15.0
    ds.PupilDilated = "YES"
    ds.DegreeOfDilation = 7.0
    ds.MydriaticAgentSequence = []
    ds.RefractiveStateSequence = []
    ds.DetectorType = "CCD"
    ds.AnatomicRegionSequence = [_code(codes.SCT.Eye)]
    ds.AcquisitionDeviceTypeCodeSequence = [_code(codes.SCT.FundusCamera)]
    ds.ChannelDescriptionCodeSequence = [_code(codes.SCT.Red), _code(codes.SCT.Green), _code(codes.SCT.Blue)]
    for keyword in ("IlluminationTypeCodeSequence", "LightPathFilterTypeStackCodeSequence",
                    "ImagePathFilterTypeStackCodeSequence", "LensesCodeSequence", "AcquisitionContextSequence"):
        setattr(ds, keyword, [])
    _set_pixels(ds, render.rgb, photometric="RGB", bits=8)
    return ds


def _base_dataset(ident: DicomIdentity, *, sop_class: str, modality: str, instance: int) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes shared by every object."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid(ident, instance)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.patient_birth_date
    ds.PatientSex = ident.patient_sex
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyDate, ds.StudyTime = ident.study_date, ident.study_time
    ds.SeriesDate, ds.SeriesTime = ident.study_date, ident.study_time
    ds.ContentDate, ds.ContentTime = ident.study_date, ident.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = ident.accession_number[-6:]
    ds.AccessionNumber = ident.accession_number
    ds.StudyDescription = "Phantom study"
    ds.SeriesInstanceUID = ident.series_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.InstanceNumber = instance
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = ident.institution
    ds.SoftwareVersions = SOFTWARE_VERSION
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, *, photometric: str, bits: int) -> None:
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _ds(value: float) -> float:
    """A float that formats within the 16 characters of a DICOM decimal string."""
    return round(float(value), 4)
