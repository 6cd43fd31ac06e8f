"""Synthetic outputs pushed to Orthanc over STOW-RS and C-STORE; real images are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from agent.config import parse_site_config
from agent.export.fundus_dicom import write_fundus_images
from agent.export.synthetic_marking import SyntheticProvenance
from agent.export.tof_dicom import write_tof_pairs
from agent.pacs.push import push_files, push_to_site_destinations
from protocols.errors import EgressBlockedError
from protocols.tasks import Task

pytestmark = pytest.mark.orthanc


@pytest.fixture()
def synthetic_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(5)
    pairs = np.stack([rng.uniform(-1, 1, (3, 32, 32)), np.where(rng.random((3, 32, 32)) > 0.7, 1.0, -1.0)], axis=1)
    dp = SyntheticProvenance(Task.DPGAN, "hospital-a", epsilon=5.0, delta=1e-5, privacy_unit="patient")
    ks = SyntheticProvenance(Task.KSALSA, "hospital-a", k=5)
    tof = write_tof_pairs(pairs, tmp_path / "tof", provenance=dp)
    fundus = write_fundus_images(rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8), tmp_path / "op", provenance=ks, laterality="L")
    return [*tof.files, *fundus.files]


def _uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _destination(server: Any, kind: str) -> dict:
    if kind == "dicomweb":
        return {"kind": "dicomweb", "url": server.dicomweb_url, "username": server.user, "password_env": "ANONFED_TEST_PACS_PASSWORD"}
    return {"kind": "dimse", "host": "127.0.0.1", "port": server.dicom_port, "called_ae": server.aet, "calling_ae": server.agent_ae}


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_push_to_configured_destination(
    kind: str, tmp_path: Path, empty_orthanc: Any, synthetic_files: list[Path], pacs_password: str
) -> None:
    # The site pulls from one PACS and pushes its synthetic outputs to the destination it names.
    source = _destination(empty_orthanc, "dicomweb") | {"name": "research", "destination": _destination(empty_orthanc, kind)}
    raw = {"site_id": "hospital-a", "sources": [source], "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5}}
    cfg = parse_site_config(raw, base_dir=tmp_path)
    (report,) = push_to_site_destinations(cfg, synthetic_files)
    assert report.sent == len(synthetic_files)
    assert empty_orthanc.instance_uids() == _uids(synthetic_files)
    # SEG, SC and OP all arrived intact: Orthanc reports the SOP classes we wrote.
    classes = {empty_orthanc.rest(f"/instances/{i}/tags?simplify")["SOPClassUID"] for i in empty_orthanc.rest("/instances")}
    assert classes == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in synthetic_files}


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_real_image_is_never_pushed(kind: str, tmp_path: Path, empty_orthanc: Any, synthetic_files: list[Path], pacs_password: str) -> None:
    from agent.pacs.source_config import parse_endpoint

    real = Path(get_testdata_file("CT_small.dcm", download=False))
    endpoint = parse_endpoint(_destination(empty_orthanc, kind), where="destination")
    with pytest.raises(EgressBlockedError, match="CT_small.dcm: not a synthetic object written by anonfed"):
        push_files([*synthetic_files, real], endpoint)
    assert empty_orthanc.instance_uids() == set()  # nothing at all was sent


def test_site_release_is_written_and_pushed_when_configured(tmp_path: Path, empty_orthanc: Any, pacs_password: str) -> None:
    from agent.export.release import export_release

    source = _destination(empty_orthanc, "dicomweb") | {"name": "research", "destination": "self"}
    raw = {"site_id": "hospital-a", "sources": [source], "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5}}
    cfg = parse_site_config(raw, base_dir=tmp_path)
    rng = np.random.default_rng(9)
    pairs = np.stack([rng.uniform(-1, 1, (2, 32, 32)), np.where(rng.random((2, 32, 32)) > 0.5, 1.0, -1.0)], axis=1)
    prov = SyntheticProvenance(Task.DPGAN, "hospital-a", run_id="r1", round=1, epsilon=2.0, delta=1e-5, privacy_unit="patient")
    release = export_release(cfg, release_id="r1-round1", provenance=prov, tof_pairs=pairs)
    assert release.folder == cfg.state.outputs / "dicom" / "r1-round1"
    assert release.push_error is None and release.pushed[0].sent == len(release.files) == 4
    assert empty_orthanc.instance_uids() == _uids(list(release.files))


def test_push_failure_keeps_the_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unused_port: int) -> None:
    from agent.export.release import export_release

    monkeypatch.setenv("ANONFED_TEST_PACS_PASSWORD", "x")
    dead = {"kind": "dicomweb", "url": f"http://127.0.0.1:{unused_port}/dicom-web", "timeout_s": 1}
    raw = {"site_id": "hospital-a", "sources": [dead | {"name": "gone", "destination": "self"}], "state_dir": "state",
           "privacy": {"max_epsilon": 8, "delta": 1e-5}}
    cfg = parse_site_config(raw, base_dir=tmp_path)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    release = export_release(cfg, release_id="k1", provenance=SyntheticProvenance(Task.KSALSA, "hospital-a", k=5), fundus_images=images)
    assert release.pushed == () and "cannot reach DICOMweb server" in (release.push_error or "")
    assert all(p.is_file() for p in release.files) and len(release.files) == 2


def test_pushed_outputs_sync_back_into_the_catalog(
    tmp_path: Path, empty_orthanc: Any, synthetic_files: list[Path], pacs_password: str
) -> None:
    """Round trip: synthetic DICOM pushed to the PACS is found, retrieved and catalogued again."""
    from agent.ingest.catalog import Catalog
    from agent.pacs.sync import sync_and_ingest

    source = _destination(empty_orthanc, "dicomweb") | {"name": "research", "destination": "self"}
    raw = {"site_id": "hospital-a", "sources": [source], "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5}}
    cfg = parse_site_config(raw, base_dir=tmp_path)
    push_to_site_destinations(cfg, synthetic_files)
    (report,) = sync_and_ingest(cfg)
    assert report.retrieved == len(synthetic_files)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        files = catalog.counts()["files"]
    images = [p for p in synthetic_files if not p.name.endswith("-label.dcm")]
    assert files.get("dicom-sc", 0) + files.get("dicom-op", 0) == len(images)
