"""Ingest throughput on the phantom consortium (issue 2, items 3 and 4).

Writes one phantom site (default: 12 TOF patients = 16 studies at 64^3, half DICOM MR series +
SEG, half NIfTI image + label; 12 fundus patients, half DICOM OP, half PNG) and measures, each on
a fresh catalog and one thread:

* DICOM instances/s: the ``tof/dicom`` folder only (single-frame MR slices + SEG objects: read,
  sha256, parse, decode, stack, reorient, cache, one transaction per series, SEG pairing);
* NIfTI volumes/s: the ``tof/nifti`` folder only (image and label volumes, gzip, reorient, cache,
  pairing);
* the whole site, and the same site again with nothing changed (the incremental re-run).

A warm-up ingest of the same files into a throw-away catalog runs first (imports, codec plugins,
page cache). Wall-clock figures depend on the machine's load; the CPU-second figures do not.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ingest_bench.py [--tof-patients 12] [--volume-size 64]``
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from agent.config import parse_site_config
from agent.ingest.pipeline import run_ingest
from agent.phantoms.consortium import ConsortiumSpec, write_consortium


def _config(source: Path, state: Path, grades: Path | None = None):
    src: dict = {"path": str(source)}
    if grades is not None:
        src["fundus_grades_csv"] = str(grades)
    raw = {"site_id": "bench", "sources": [src], "state_dir": str(state), "privacy": {"max_epsilon": 8.0, "delta": 1e-5}}
    return parse_site_config(raw, base_dir=state.parent)


def _timed(cfg):
    """Wall seconds, CPU seconds of this process and the report (CPU time is what a shared,
    loaded machine does not distort)."""
    start, cpu = time.perf_counter(), time.process_time()
    report = run_ingest(cfg)
    return time.perf_counter() - start, time.process_time() - cpu, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tof-patients", type=int, default=12)
    ap.add_argument("--fundus-patients", type=int, default=12)
    ap.add_argument("--volume-size", type=int, default=64)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        spec = ConsortiumSpec(sites=1, seed=0, tof_patients=args.tof_patients, fundus_patients=args.fundus_patients,
                              volume_size=args.volume_size, fundus_size=192)
        start = time.perf_counter()
        summary = write_consortium(root / "phantoms", spec, progress=False)
        site = summary.site_dir(summary.site_ids[0])
        print(f"phantom site written in {time.perf_counter() - start:.1f} s: {summary.describe().splitlines()[1].strip()}")

        dicom_dir, nifti_dir = site / "tof" / "dicom", site / "tof" / "nifti"
        n_dicom = sum(1 for p in dicom_dir.rglob("*.dcm"))
        n_nifti = sum(1 for p in nifti_dir.rglob("*.nii.gz"))
        n_total = sum(1 for p in site.rglob("*") if p.is_file())

        # warm-up (imports, codec plugins, page cache of the sources) so the first figure is not penalised
        _timed(_config(dicom_dir, root / "state-warmup"))
        _timed(_config(nifti_dir, root / "state-warmup"))

        secs, cpu, report = _timed(_config(dicom_dir, root / "state-dicom"))
        assert report.quarantined_by_reason == {}, report.describe()
        print(f"DICOM: {n_dicom} instances ({report.units_by_kind}) in {secs:.2f} s = {n_dicom / secs:.0f} instances/s "
              f"({n_dicom / cpu:.0f} per CPU-second)")

        secs, cpu, report = _timed(_config(nifti_dir, root / "state-nifti"))
        assert report.quarantined_by_reason == {}, report.describe()
        print(f"NIfTI: {n_nifti} volumes ({report.labeled_volumes} image+label pairs, {args.volume_size}^3) in {secs:.2f} s "
              f"= {n_nifti / secs:.1f} volumes/s ({n_nifti / cpu:.1f} per CPU-second)")

        cfg = _config(site, root / "state-site", site / "fundus" / "grades.csv")
        secs, cpu, report = _timed(cfg)
        print(f"whole site: {n_total} files in {secs:.2f} s, {cpu:.2f} CPU-s ({report.labeled_volumes} labeled volumes, "
              f"{report.graded_images} graded fundus images, {sum(report.quarantined_by_reason.values())} quarantined)")
        secs2, _, report2 = _timed(cfg)
        print(f"re-run, nothing changed: {secs2:.3f} s, {report2.files_parsed} files parsed "
              f"({secs / max(secs2, 1e-9):.0f}x faster)")


if __name__ == "__main__":
    main()
