"""SEGs of 2-D images: the synthetic TOF export (one Secondary Capture + one SEG per patch) is read
back by ingest as labelled 2-D images, and broken pairs are quarantined with their reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.config import SiteConfig
from agent.export.synthetic_marking import SyntheticProvenance
from agent.export.tof_dicom import TofExport, to_grey, to_mask, write_tof_pairs
from agent.ingest.catalog import Catalog
from agent.ingest.datasets import load_labeled_images_2d, load_labeled_volumes
from agent.ingest.dicom_seg import label_for_image
from agent.ingest.pipeline import run_ingest
from agent.ingest.quarantine import Quarantined
from protocols.tasks import Task

from ingest_builders import site_config

N_PAIRS = 5
SIZE = 16


@pytest.fixture
def pairs(rng: np.random.Generator) -> np.ndarray:
    """(n, 2, S, S) like generator output: image in [-1, 1], label channel in tanh range."""
    image = rng.uniform(-1.0, 1.0, (N_PAIRS, SIZE, SIZE))
    label = np.tanh(2.0 * rng.normal(size=(N_PAIRS, SIZE, SIZE)))
    label[0] = -1.0  # an empty label is still the label of its image
    return np.stack([image, label], axis=1).astype(np.float32)


@pytest.fixture
def exported(tmp_path: Path, pairs: np.ndarray) -> TofExport:
    provenance = SyntheticProvenance(Task.DPGAN, "hospital-a", model_sha256="0f" * 32, run_id="run-1", round=1,
                                     epsilon=7.4, delta=1e-5, privacy_unit="patient")
    return write_tof_pairs(pairs, tmp_path / "data", provenance=provenance)


@pytest.fixture
def cfg(tmp_path: Path, exported: TofExport) -> SiteConfig:
    return site_config(tmp_path, [{"path": "data"}])


def _pair_index(image: np.ndarray, pairs: np.ndarray) -> int:
    matches = [i for i, pair in enumerate(pairs) if np.array_equal(image, to_grey(pair[0]).astype(np.float32))]
    assert len(matches) == 1, "every loaded image must be exactly one exported patch"
    return matches[0]


def _quarantined(cfg: SiteConfig) -> dict[str, tuple[str, str]]:
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        return {row.path.name: (row.reason_code, row.detail) for row in catalog.quarantined()}


def _loaded_indices(cfg: SiteConfig, pairs: np.ndarray) -> list[int]:
    return sorted(_pair_index(record.image, pairs) for record in load_labeled_images_2d(cfg))


def test_every_exported_pair_comes_back_as_a_labeled_2d_image(cfg: SiteConfig, pairs: np.ndarray) -> None:
    report = run_ingest(cfg)
    assert report.quarantined_by_reason == {}
    assert report.labeled_images_2d == N_PAIRS and report.image_labels_built == N_PAIRS
    assert report.labeled_volumes == 0 and load_labeled_volumes(cfg) == []
    records = load_labeled_images_2d(cfg)
    assert sorted(_pair_index(r.image, pairs) for r in records) == list(range(N_PAIRS))
    for record in records:
        pair = pairs[_pair_index(record.image, pairs)]
        assert record.image.dtype == np.float32 and record.label.dtype == np.uint8
        assert np.array_equal(record.label, to_mask(pair[1]))  # exact: the export thresholds at 0
        # the image within the export's quantisation (12-bit grey values for [-1, 1])
        assert np.abs(record.image / 4095.0 * 2.0 - 1.0 - pair[0]).max() <= 1.0 / 4095.0 + 1e-6
    assert len({r.patient_key for r in records}) == 1  # one synthetic identity per export batch
    assert any(r.label.sum() == 0 for r in records) and any(r.label.sum() > 0 for r in records)

    again = run_ingest(cfg)  # nothing changed: nothing parsed, no label rebuilt, same pairs
    assert again.files_parsed == 0 and again.image_labels_built == 0 and again.labeled_images_2d == N_PAIRS
    assert _quarantined(cfg) == {}


def test_seg_whose_size_differs_from_its_image_is_a_label_mismatch(cfg: SiteConfig, exported: TofExport, pairs: np.ndarray) -> None:
    image = pydicom.dcmread(exported.images[0])
    cropped = image.pixel_array[: SIZE // 2, : SIZE // 2].copy()
    image.Rows, image.Columns = cropped.shape
    image.PixelData = cropped.tobytes()
    image.save_as(exported.images[0])  # same SOP instance, smaller matrix
    report = run_ingest(cfg)
    reason, detail = _quarantined(cfg)[exported.segmentations[0].name]
    assert reason == "label-mismatch" and f"{(SIZE, SIZE)}" in detail and f"{cropped.shape}" in detail
    assert report.quarantined_by_reason == {"label-mismatch": 1}
    assert _loaded_indices(cfg, pairs) == list(range(1, N_PAIRS))


def test_seg_whose_image_is_missing_is_an_orphan_label(cfg: SiteConfig, exported: TofExport, pairs: np.ndarray) -> None:
    exported.images[0].unlink()
    report = run_ingest(cfg)
    reason, detail = _quarantined(cfg)[exported.segmentations[0].name]
    assert reason == "orphan-label" and "not in the catalog" in detail
    assert report.quarantined_by_reason == {"orphan-label": 1}
    assert _loaded_indices(cfg, pairs) == list(range(1, N_PAIRS))


def test_missing_image_added_later_is_paired_on_the_next_run(cfg: SiteConfig, exported: TofExport, pairs: np.ndarray) -> None:
    kept = exported.images[0].read_bytes()
    exported.images[0].unlink()
    assert run_ingest(cfg).quarantined_by_reason == {"orphan-label": 1}
    exported.images[0].write_bytes(kept)
    report = run_ingest(cfg)
    assert report.quarantined_by_reason == {} and report.labeled_images_2d == N_PAIRS


def test_seg_without_per_frame_reference_uses_its_single_referenced_instance(
    cfg: SiteConfig, exported: TofExport, pairs: np.ndarray
) -> None:
    seg = pydicom.dcmread(exported.segmentations[1])
    del seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
    seg.save_as(exported.segmentations[1])
    assert run_ingest(cfg).quarantined_by_reason == {}
    assert _loaded_indices(cfg, pairs) == list(range(N_PAIRS))


def test_seg_that_names_no_image_is_an_orphan_label(cfg: SiteConfig, exported: TofExport, pairs: np.ndarray) -> None:
    seg = pydicom.dcmread(exported.segmentations[1])
    del seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
    del seg.ReferencedSeriesSequence
    del seg.SourceImageSequence
    seg.save_as(exported.segmentations[1])
    run_ingest(cfg)
    reason, detail = _quarantined(cfg)[exported.segmentations[1].name]
    assert reason == "orphan-label" and "does not say which image it labels" in detail
    assert _loaded_indices(cfg, pairs) == [0, *range(2, N_PAIRS)]


def test_second_seg_for_one_image_is_a_label_mismatch(cfg: SiteConfig, exported: TofExport, pairs: np.ndarray) -> None:
    copy = exported.segmentations[2].with_name("tof-extra-label.dcm")
    copy.write_bytes(exported.segmentations[2].read_bytes())
    report = run_ingest(cfg)
    assert report.quarantined_by_reason == {"label-mismatch": 1}
    held = {name: q for name, q in _quarantined(cfg).items()}
    assert len(held) == 1 and next(iter(held.values()))[1] == "the referenced image already has a SEG label"
    assert _loaded_indices(cfg, pairs) == list(range(N_PAIRS))


def test_seg_of_a_colour_image_is_a_label_mismatch() -> None:
    seg = {"frames": np.zeros((1, 4, 5), np.uint8)}
    with pytest.raises(Quarantined, match="single-frame grey-level image") as info:
        label_for_image(seg, [0], (4, 5, 3))
    assert info.value.reason.value == "label-mismatch"


def test_label_of_an_image_is_the_union_of_its_frames() -> None:
    frames = np.zeros((3, 4, 5), np.uint8)
    frames[0, 1, 1] = frames[2, 3, 4] = frames[1, 0, 0] = 1
    label = label_for_image({"frames": frames}, [0, 2], (4, 5))
    assert label.dtype == np.uint8 and label.sum() == 2 and label[1, 1] == label[3, 4] == 1 and label[0, 0] == 0
