"""Sync logic with an in-memory PACS: bounded concurrency and how work is batched."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from agent.config import PacsFilters, parse_site_config
from agent.pacs.query import InstanceRef, SeriesRef
from agent.pacs import sync as sync_module
from agent.pacs.sync import sync_source


def _instance(study: str, series: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class FakePacs:
    """``n_series`` single-instance series and one series of ``big`` instances; records concurrency."""

    def __init__(self, n_series: int, big: int) -> None:
        study = generate_uid()
        self.files: dict[str, tuple[InstanceRef, bytes]] = {}
        self.series: list[SeriesRef] = []
        for count in [1] * n_series + [big]:
            series = SeriesRef(study, generate_uid(), modality="MR")
            self.series.append(series)
            for _ in range(count):
                data = _instance(study, series.series_uid)
                sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
                self.files[sop] = (InstanceRef(study, series.series_uid, sop), data)
        self.active = self.peak = 0
        self.calls: list[tuple[int, bool]] = []
        self.lock = threading.Lock()

    def find_series(self, filters: PacsFilters) -> list[SeriesRef]:
        return list(self.series)

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]:
        return [ref for ref, _ in self.files.values() if ref.series_uid == series.series_uid]

    def retrieve(self, instances: Sequence[InstanceRef], sink: Callable[[bytes], None], *, whole_series: bool = False) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.calls.append((len(instances), whole_series))
        try:
            time.sleep(0.02)
            for ref in instances:
                sink(self.files[ref.sop_uid][1])
        finally:
            with self.lock:
                self.active -= 1


def _cfg(tmp_path: Path, concurrency: int):
    raw = {"site_id": "hospital-a", "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5},
           "sources": [{"kind": "dicomweb", "name": "fake", "url": "http://pacs.invalid/dicom-web", "max_concurrency": concurrency}]}
    return parse_site_config(raw, base_dir=tmp_path)


def test_at_most_max_concurrency_connections(tmp_path: Path) -> None:
    pacs = FakePacs(n_series=24, big=0)
    cfg = _cfg(tmp_path, concurrency=3)
    report = sync_source(cfg, cfg.sources[0], client=pacs)
    assert report.retrieved == 24
    assert pacs.peak == 3  # parallel, and never more than allowed


def test_new_series_whole_partial_series_per_instance(tmp_path: Path) -> None:
    pacs = FakePacs(n_series=0, big=40)
    cfg = _cfg(tmp_path, concurrency=2)
    sync_source(cfg, cfg.sources[0], client=pacs)
    assert pacs.calls == [(40, True)]  # one request for a series nothing of which was staged
    # Two new instances appear in that series: only they are fetched, per instance.
    series = pacs.series[0]
    for _ in range(2):
        data = _instance(series.study_uid, series.series_uid)
        sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        pacs.files[sop] = (InstanceRef(series.study_uid, series.series_uid, sop), data)
    pacs.calls.clear()
    report = sync_source(cfg, cfg.sources[0], client=pacs)
    assert report.retrieved == 2 and report.already_staged == 40
    assert pacs.calls == [(2, False)]
    assert sync_module.BATCH_SIZE >= 2
