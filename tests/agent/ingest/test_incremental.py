"""Re-runs: unchanged files are not opened, changes are re-ingested, deletions are marked, and a
crash in the middle leaves a consistent catalog that the next run completes."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import agent.ingest.pipeline as pipeline
from agent.ingest.cache import ArrayCache
from agent.ingest.catalog import Catalog
from agent.ingest.datasets import load_fundus_images, load_labeled_volumes
from agent.ingest.pipeline import run_ingest
from protocols.errors import IntegrityError

from ingest_builders import mr_series, nifti, png, site_config

N_SLICES = 5
N_FILES = N_SLICES + 2 + 3 + 1  # slices, NIfTI pair, PNGs, grades CSV


def _small_site(root: Path, rng: np.random.Generator):
    data = root / "data"
    mr_series(data / "series", rng.integers(0, 900, (N_SLICES, 6, 6)).astype(np.int16), patient_id="INC-0001")
    nifti(data / "INC-0002_s1_tof.nii.gz", rng.random((6, 7, 8), dtype=np.float32))
    nifti(data / "INC-0002_s1_tof_label.nii.gz", (rng.random((6, 7, 8)) > 0.8).astype(np.uint8))
    for i in range(3):
        png(data / "fundus" / f"INC-01{i}_L.png", rng)
    (data / "grades.csv").write_text("file,grade\n" + "".join(f"fundus/INC-01{i}_L.png,{i}\n" for i in range(3)))
    return site_config(root, [{"path": "data", "fundus_grades_csv": "data/grades.csv"}])


def _state(cfg) -> dict:
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as c:
        q = c.conn.execute
        return {
            "files": sorted(q("SELECT path_key, status, kind, content_hash FROM files").fetchall()),
            "series": sorted(q("SELECT key, kind, status, cache_key, label_cache_key, grade, patient_key FROM series").fetchall()),
            "quarantine": sorted(q("SELECT path_key, reason_code FROM quarantine").fetchall()),
        }


def _check_consistent(cfg) -> None:
    conn = sqlite3.connect(cfg.state.catalog)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        cache = ArrayCache(cfg.state.cache)
        for key, label in conn.execute("SELECT cache_key, label_cache_key FROM series WHERE status='ok'"):
            assert cache.has(key) and (label is None or cache.has(label))
        orphans = conn.execute(
            "SELECT COUNT(*) FROM instances i JOIN files f ON f.path_key=i.file_key WHERE f.status != 'ok'"
        ).fetchone()[0]
        assert orphans == 0
    finally:
        conn.close()


def test_rerun_opens_nothing(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    first = run_ingest(cfg)
    before = _state(cfg)
    second = run_ingest(cfg)
    assert first.files_parsed == first.files_scanned == N_FILES
    assert second.files_parsed == 0 and second.files_unchanged == N_FILES and second.label_volumes_built == 0
    assert _state(cfg) == before


def test_touched_but_identical_file_is_rehashed_not_parsed(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    run_ingest(cfg)
    target = tmp_path / "data" / "INC-0002_s1_tof.nii.gz"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    report = run_ingest(cfg)
    assert report.files_rehashed == 1 and report.files_parsed == 0


def test_modified_file_is_reingested(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    run_ingest(cfg)
    new = np.full((6, 7, 8), 5.0, np.float32)
    nifti(tmp_path / "data" / "INC-0002_s1_tof.nii.gz", new)
    report = run_ingest(cfg)
    assert report.files_parsed == 1
    (volume,) = load_labeled_volumes(cfg)
    assert np.all(volume.image == 5.0)


def test_deleted_slice_marks_file_gone_and_rebuilds_the_series(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    run_ingest(cfg)
    (tmp_path / "data" / "series" / f"slice-{N_SLICES - 1:03d}.dcm").unlink()
    report = run_ingest(cfg)
    assert report.files_gone == 1 and report.files_parsed == N_SLICES - 1  # the remaining slices re-read
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as c:
        (series,) = c.live_series("dicom-series")
        assert series.shape[0] == N_SLICES - 1
        assert c.conn.execute("SELECT COUNT(*) FROM files WHERE status='gone'").fetchone()[0] == 1
    (tmp_path / "data" / "series" / "slice-001.dcm").unlink()  # now a gap: the rest is quarantined
    run_ingest(cfg)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as c:
        assert c.live_series("dicom-series") == []
        assert {r.reason_code for r in c.quarantined()} == {"inconsistent-slices"}
    _check_consistent(cfg)


def test_fixing_a_grade_takes_effect_on_the_next_run(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    grades = tmp_path / "data" / "grades.csv"
    grades.write_text(grades.read_text().replace(",2\n", ",x\n"))
    run_ingest(cfg)
    assert sorted(i.grade for i in load_fundus_images(cfg)) == [0, 1]
    grades.write_text(grades.read_text().replace(",x\n", ",4\n"))
    report = run_ingest(cfg)
    assert report.files_parsed == 1  # only the CSV itself changed
    assert sorted(i.grade for i in load_fundus_images(cfg)) == [0, 1, 4]
    assert report.quarantined_by_reason == {}


def test_crash_mid_ingest_leaves_a_consistent_catalog_and_the_next_run_completes(tmp_path, rng, monkeypatch) -> None:
    cfg = _small_site(tmp_path, rng)
    real_write = pipeline._write_outcome
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated power loss")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_write_outcome", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated power loss"):
        run_ingest(cfg)
    _check_consistent(cfg)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as c:
        written = c.conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert 0 < written < N_FILES
    monkeypatch.setattr(pipeline, "_write_outcome", real_write)
    report = run_ingest(cfg)
    assert report.files_parsed == N_FILES - written
    _check_consistent(cfg)
    after = _state(cfg)
    assert run_ingest(cfg).files_parsed == 0 and _state(cfg) == after
    assert len(load_labeled_volumes(cfg)) == 1 and len(load_fundus_images(cfg)) == 3


def test_file_that_grows_too_large_is_dropped_and_quarantined(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    run_ingest(cfg)
    big = tmp_path / "data" / "INC-0002_s1_tof.nii.gz"
    with open(big, "r+b") as fh:
        fh.truncate(cfg.ingest.max_file_bytes + 1)
    report = run_ingest(cfg)
    assert report.files_gone == 1 and report.quarantined_by_reason == {"file-too-large": 1, "orphan-label": 1}
    assert load_labeled_volumes(cfg) == []


def test_a_second_concurrent_run_waits_for_the_first(tmp_path, rng) -> None:
    import fcntl
    import threading

    cfg = _small_site(tmp_path, rng)
    cfg.state.root.mkdir(parents=True)
    finished = threading.Event()
    with open(cfg.state.root / "ingest.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: (run_ingest(cfg), finished.set()))
        worker.start()
        assert not finished.wait(0.5)  # blocked while another run holds the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=60)
    assert finished.is_set()


def test_loaders_before_any_ingest_return_nothing_and_create_nothing(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    assert load_labeled_volumes(cfg) == [] and load_fundus_images(cfg) == []
    assert not cfg.state.catalog.exists()


def test_an_unforeseen_error_quarantines_that_group_and_the_run_goes_on(tmp_path, rng, monkeypatch) -> None:
    cfg = _small_site(tmp_path, rng)
    real = pipeline.ingest_single_file

    def explode_on_nifti(member, ctx):
        if member.path.name.endswith(".nii.gz"):
            raise ZeroDivisionError("bug")
        return real(member, ctx)

    monkeypatch.setattr(pipeline, "ingest_single_file", explode_on_nifti)
    report = run_ingest(cfg)
    assert report.quarantined_by_reason == {"ingest-error": 2}
    assert report.units_by_kind == {"dicom-series": 1, "fundus-image": 3}
    monkeypatch.setattr(pipeline, "ingest_single_file", real)
    report = run_ingest(cfg)  # the failed files are retried although unchanged
    assert report.files_parsed == 2 and report.quarantined_by_reason == {} and report.labeled_volumes == 1


def test_deleted_cache_is_rebuilt_by_the_next_run(tmp_path, rng) -> None:
    cfg = _small_site(tmp_path, rng)
    run_ingest(cfg)
    before = [v.image for v in load_labeled_volumes(cfg)]
    shutil.rmtree(cfg.state.cache)
    with pytest.raises(IntegrityError, match="run `anonfed ingest` again"):
        load_labeled_volumes(cfg)
    report = run_ingest(cfg)
    assert report.files_parsed == N_FILES - 1  # every unit's files; the grades CSV has no cache entry
    np.testing.assert_array_equal(load_labeled_volumes(cfg)[0].image, before[0])
    assert run_ingest(cfg).files_parsed == 0
