"""Enhanced multi-frame MR volumes and SEG placement on a series grid."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from agent.ingest.cache import ArrayCache
from agent.ingest.catalog import Catalog
from agent.ingest.dicom_seg import label_for_stack
from agent.ingest.pipeline import run_ingest
from agent.ingest.quarantine import Quarantined
from agent.ingest.series_assembly import StackGeometry

from ingest_builders import site_config


def _enhanced_mr(path, frames_kji: np.ndarray, order: list[int], *, step: float = 2.0) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MR", "ENH-0001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = frames_kji.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.6], step
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orient]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, k * step]
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = frames_kji[order].astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_mr_frames_are_stacked_by_position(tmp_path, rng) -> None:
    vol = rng.integers(0, 4000, (4, 5, 6)).astype(np.uint16)
    (tmp_path / "data").mkdir()
    _enhanced_mr(tmp_path / "data" / "enhanced.dcm", vol, order=[2, 0, 3, 1])
    cfg = site_config(tmp_path, [{"path": "data"}])
    report = run_ingest(cfg)
    assert report.units_by_kind == {"dicom-enhanced": 1} and report.quarantined_by_reason == {}
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        (row,) = catalog.live_series("dicom-enhanced")
    cached = ArrayCache(cfg.state.cache).load(row.cache_key)
    # canonical RAS: DICOM rows (A->P) and columns (R->L) are flipped, slices (I->S) kept
    np.testing.assert_array_equal(cached["image"], vol[:, ::-1, ::-1].astype(np.float32))
    np.testing.assert_allclose(cached["spacing"], [2.0, 0.5, 0.6])


def test_enhanced_mr_with_a_missing_frame_position_is_inconsistent(tmp_path, rng) -> None:
    vol = rng.integers(0, 4000, (4, 5, 6)).astype(np.uint16)
    (tmp_path / "data").mkdir()
    _enhanced_mr(tmp_path / "data" / "enhanced.dcm", vol, order=[0, 1, 3, 3])
    report = run_ingest(site_config(tmp_path, [{"path": "data"}]))
    assert report.quarantined_by_reason == {"inconsistent-slices": 1}


def _grid() -> StackGeometry:
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = [0.6, 0, 0], [0, 0.5, 0], [0, 0, 2.0]
    return StackGeometry((3, 4, 5), affine)


def _seg(positions, shape=(4, 5)):
    frames = np.ones((len(positions), *shape), np.uint8)
    return {"frames": frames, "positions": np.asarray(positions, float), "orientation": np.array([1.0, 0, 0, 0, 1, 0])}


def test_seg_frames_land_on_their_slices() -> None:
    label = label_for_stack(_seg([[0, 0, 4.0], [0, 0, 0.0]]), _grid())
    assert label[:, 0, 0].tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("seg", "match"),
    [
        (_seg([[0, 0, 3.0]]), "does not lie on a slice"),
        (_seg([[0, 0, 6.0]]), "outside the referenced series"),
        (_seg([[0, 0, 2.0]], shape=(4, 6)), "SEG frames are"),
    ],
)
def test_misplaced_seg_is_a_label_mismatch(seg, match) -> None:
    with pytest.raises(Quarantined, match=match) as info:
        label_for_stack(seg, _grid())
    assert info.value.reason.value == "label-mismatch"


def test_seg_on_an_enhanced_mr_volume(tmp_path, rng) -> None:
    import highdicom as hd
    import pydicom
    from agent.ingest.datasets import load_labeled_volumes

    vol = rng.integers(0, 4000, (3, 5, 6)).astype(np.uint16)
    (tmp_path / "data").mkdir()
    _enhanced_mr(tmp_path / "data" / "enhanced.dcm", vol, order=[0, 1, 2])
    source = pydicom.dcmread(tmp_path / "data" / "enhanced.dcm")
    source.FrameOfReferenceUID = generate_uid()
    for keyword, value in (("PatientName", "Test^Enhanced"), ("PatientBirthDate", ""), ("PatientSex", ""), ("StudyDate", ""),
                           ("StudyTime", ""), ("StudyID", ""), ("AccessionNumber", ""), ("ReferringPhysicianName", ""),
                           ("SeriesNumber", 1), ("InstanceNumber", 1)):
        setattr(source, keyword, value)
    mask = np.zeros((3, 5, 6), bool)
    mask[1, 2, 3] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="vessel",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("59820001", "SCT", "Blood vessel"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    source.save_as(tmp_path / "data" / "enhanced.dcm", enforce_file_format=True)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )
    seg.save_as(tmp_path / "data" / "seg.dcm")
    cfg = site_config(tmp_path, [{"path": "data"}])
    report = run_ingest(cfg)
    assert report.quarantined_by_reason == {} and report.labeled_volumes == 1
    (volume,) = load_labeled_volumes(cfg)
    assert volume.label.sum() == 1 and volume.label[1, 5 - 1 - 2, 6 - 1 - 3] == 1  # rows and columns flipped to RAS
