"""Phantom generation and patch extraction speed (issue 2, items 5 and 6).

Measures, on this machine and one thread:

* rendering time per TOF volume (geometry + rendering, no files) at 32^3, 64^3 (default), 128^3;
* rendering time per fundus photograph at 128, 192 (default) and 512 px;
* wall time of ``write_consortium`` for the default spec (3 sites, 6 TOF and 12 fundus patients), i.e.
  including DICOM/SEG/NIfTI/PNG encoding and fsync'd atomic writes;
* patch extraction throughput (32x32 and 96x96 patches from 64^3 volumes).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phantom_bench.py [--patients 6]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.patching.patches import extract_patches
from agent.phantoms.consortium import ConsortiumSpec, write_consortium
from agent.phantoms.fundus_calibration import reference_stats
from agent.phantoms.fundus_image import draw_fundus_eye, render_fundus
from agent.phantoms.in_memory import tof_volumes
from agent.phantoms.seeding import Stream, rng_for
from agent.phantoms.tof_volume import ScannerProfile, TofGeometry, draw_tof_patient, render_tof_study


def _tof_seconds(size: int, patients: int) -> float:
    geometry = TofGeometry.cube(size)
    profile = ScannerProfile.draw(rng_for(0, Stream.SITE, 0))
    times = []
    for i in range(patients):
        start = time.perf_counter()
        patient = draw_tof_patient(rng_for(0, Stream.TOF, 0, i, 0), geometry)
        render_tof_study(patient, geometry, profile, rng_for(0, Stream.TOF, 0, i, 1))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fundus_seconds(size: int, patients: int) -> float:
    reference_stats()  # loaded once per process; not part of a per-image cost
    times = []
    for j in range(patients):
        start = time.perf_counter()
        eye = draw_fundus_eye(rng_for(0, Stream.FUNDUS, 0, j, 1), laterality="R" if j % 2 else "L")
        render_fundus(eye, grade=j % 5, size=size, rng=rng_for(0, Stream.FUNDUS, 0, j, 10))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=6, help="patients per measurement (median reported)")
    args = ap.parse_args()

    for size in (32, 64, 128):
        print(f"TOF volume {size}^3: {_tof_seconds(size, args.patients) * 1000:.0f} ms per volume (median of {args.patients})")
    for size in (128, 192, 512):
        print(f"fundus {size} px: {_fundus_seconds(size, args.patients) * 1000:.0f} ms per image (median of {args.patients})")

    with tempfile.TemporaryDirectory() as tmp:
        spec = ConsortiumSpec()
        start = time.perf_counter()
        summary = write_consortium(Path(tmp) / "phantoms", spec, progress=False)
        wall = time.perf_counter() - start
        files = sum(1 for _ in (Path(tmp) / "phantoms").rglob("*") if _.is_file())
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "phantoms").rglob("*") if p.is_file()) / 1e6
        print(f"write_consortium default spec {spec}: {wall:.1f} s wall, {files} files, {size_mb:.1f} MB")
        print("  " + summary.describe().splitlines()[-1])

    volumes = tof_volumes(args.patients, seed=0, size=64, prefix="bench")
    for patch in (32, 96):
        start = time.perf_counter()
        ps = extract_patches(volumes, size=patch, per_volume=200, rng=np.random.default_rng(0))
        seconds = time.perf_counter() - start
        print(f"extract_patches {patch}x{patch} from {len(volumes)} volumes of 64^3: {len(ps)} patches in "
              f"{seconds:.2f} s ({len(ps) / seconds:.0f} patches/s)")


if __name__ == "__main__":
    main()
