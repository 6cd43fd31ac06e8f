"""The agent's own ingest reads the synthetic DICOM it wrote back: images catalogued, none lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from agent.config import parse_site_config
from agent.export.fundus_dicom import FundusIod, write_fundus_images
from agent.export.tof_dicom import write_tof_pairs


def test_synthetic_outputs_are_reread_by_ingest(
    tmp_path: Path, generator_pairs: np.ndarray, averaged_fundus: np.ndarray, dp_provenance, ksalsa_provenance  # noqa: ANN001
) -> None:
    from agent.ingest.catalog import Catalog
    from agent.ingest.pipeline import run_ingest

    out = tmp_path / "synthetic"
    tof = write_tof_pairs(generator_pairs, out / "tof", provenance=dp_provenance)
    op = write_fundus_images(averaged_fundus, out / "op", provenance=ksalsa_provenance, laterality="R")
    sc = write_fundus_images(averaged_fundus, out / "sc", provenance=ksalsa_provenance, laterality="L", iod=FundusIod.SC)
    raw = {"site_id": "hospital-a", "sources": [{"path": str(out)}], "state_dir": str(tmp_path / "state"),
           "privacy": {"max_epsilon": 8, "delta": 1e-5}}
    cfg = parse_site_config(raw, base_dir=tmp_path)
    report = run_ingest(cfg)
    assert report.files_scanned == len(tof.files) + len(op.files) + len(sc.files)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        counts = catalog.counts()
        quarantined = catalog.quarantined()
    files = counts["files"]
    assert files.get("dicom-sc", 0) == len(tof.images)
    assert files.get("dicom-op", 0) == len(op.images) + len(sc.images)  # Modality OP wins over the SC class
    # Every synthetic pair comes back as a pair: each 2-D SEG is paired with the SC image it labels.
    assert quarantined == []
    assert report.labeled_images_2d == len(tof.images)
    from agent.ingest.datasets import load_labeled_images_2d

    pairs = load_labeled_images_2d(cfg)
    assert len(pairs) == len(generator_pairs)
    got = sorted(int(p.label.sum()) for p in pairs)
    want = sorted(int((pair[1] > 0).sum()) for pair in generator_pairs)
    assert got == want


def test_ingest_reader_decodes_the_synthetic_seg(tmp_path: Path, generator_pairs: np.ndarray, dp_provenance) -> None:  # noqa: ANN001
    from agent.ingest.dicom_files import DicomRole, decode_pixels, header_of, parse

    tof = write_tof_pairs(generator_pairs, tmp_path, provenance=dp_provenance)
    for pair, image_path, seg_path in zip(generator_pairs, tof.images, tof.segmentations):
        seg = parse(seg_path.read_bytes(), with_pixels=True)
        assert header_of(seg).role is DicomRole.SEG
        assert np.array_equal(decode_pixels(seg).reshape(pair[1].shape) > 0, pair[1] > 0)
        image = parse(image_path.read_bytes(), with_pixels=True)
        assert header_of(image).role is DicomRole.SC
        assert decode_pixels(image).shape == pair[0].shape
