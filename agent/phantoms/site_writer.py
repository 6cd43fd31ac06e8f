"""Generate and write one phantom site: TOF studies (DICOM or NIfTI) and fundus images (OP or PNG).

Which patients get several studies or images, and which file format each study or image uses, is
fixed by rule so every site exercises both ingest paths and patient-level grouping:

- TOF patient ``i``: two studies (baseline + follow-up after a small head motion) when ``i % 3 == 1``,
  otherwise one. Studies alternate DICOM (MR series + SEG) and NIfTI (image + label) in site order,
  so no study is written twice.
- Fundus patient ``j``: both eyes when ``j % 3 == 0``; two visits of one eye when ``j % 3 == 1``;
  otherwise one photograph. Images alternate DICOM OP and PNG; ``fundus/grades.csv`` lists every
  fundus image (PNG and DICOM) with its grade and patient ID.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from agent.phantoms import dicom_writers as dw
from agent.phantoms.fundus_image import draw_fundus_eye, render_fundus
from agent.phantoms.nifti_writers import write_nifti_pair
from agent.phantoms.png_writers import write_grades_csv, write_png
from agent.phantoms.seeding import Stream, fake_patient_ids, fake_patient_name, rng_for, uid_for
from agent.phantoms.tof_volume import ScannerProfile, TofGeometry, draw_tof_patient, follow_up, render_tof_study

log = logging.getLogger(__name__)

_BASE_DATE = dt.date(2024, 1, 8)


@dataclasses.dataclass(frozen=True)
class SiteSummary:
    """What was written for one site (counts only; patient IDs are fake but still not printed)."""

    site_id: str
    tof_patient_ids: tuple[str, ...]
    tof_dicom_studies: int
    tof_nifti_studies: int
    fundus_patient_ids: tuple[str, ...]
    fundus_dicom_images: int
    fundus_png_images: int
    grade_counts: tuple[int, int, int, int, int]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "SiteSummary":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@dataclasses.dataclass
class Timings:
    """Wall-clock generation time, accumulated over a run (rendering only, not file writing)."""

    tof_seconds: float = 0.0
    tof_volumes: int = 0
    fundus_seconds: float = 0.0
    fundus_images: int = 0


def tof_study_count(patient_index: int) -> int:
    """Number of TOF studies of patient ``patient_index`` (see module docstring)."""
    return 2 if patient_index % 3 == 1 else 1


def fundus_plan(patient_index: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(laterality, visit) of each photograph of a fundus patient (see module docstring)."""
    if patient_index % 3 == 0:
        return [("R", 1), ("L", 1)]
    eye = "R" if rng.random() < 0.5 else "L"
    return [(eye, 1), (eye, 2)] if patient_index % 3 == 1 else [(eye, 1)]


def write_site(root: Path, *, seed: int, site_index: int, site_id: str, tof_patients: int, fundus_patients: int,
               volume_size: int, fundus_size: int, timings: Timings, tick: Callable[[], None]) -> SiteSummary:
    """Generate and write every file of one site under ``root / site_id``."""
    site_dir = root / site_id
    institution = f"Phantom Hospital {site_id.rsplit('-', 1)[-1].upper()}"
    profile = ScannerProfile.draw(rng_for(seed, Stream.SITE, site_index))
    geometry = TofGeometry.cube(volume_size)
    tof_ids = fake_patient_ids(seed, site_index, site_id, tof_patients, kind=Stream.TOF)
    fundus_ids = fake_patient_ids(seed, site_index, site_id, fundus_patients, kind=Stream.FUNDUS)

    counter = 0
    n_dicom = n_nifti = 0
    for i, pid in enumerate(tof_ids):
        start = time.perf_counter()
        patient = draw_tof_patient(rng_for(seed, Stream.TOF, site_index, i, 0), geometry)
        timings.tof_seconds += time.perf_counter() - start
        for s in range(tof_study_count(i)):
            start = time.perf_counter()
            if s > 0:
                patient = follow_up(patient, rng_for(seed, Stream.TOF, site_index, i, 100 + s))
            study = render_tof_study(patient, geometry, profile, rng_for(seed, Stream.TOF, site_index, i, 1 + s))
            timings.tof_seconds += time.perf_counter() - start
            timings.tof_volumes += 1
            label = f"s{s + 1}"
            if counter % 2 == 0:
                ident = _identity(seed, site_id, institution, "tof", i, s, pid)
                slices = dw.mr_series(study, ident)
                study_dir = site_dir / "tof" / "dicom" / f"study-{counter + 1:03d}"
                for k, ds in enumerate(slices):
                    dw.save_dataset(ds, study_dir / "mr" / f"slice-{k + 1:04d}.dcm")
                seg_ident = dataclasses.replace(
                    ident,
                    series_uid=uid_for(seed, site_id, "tof", i, s, "seg-series"),
                    instance_uid_key=f"{seed}/{site_id}/tof/{i}/{s}/seg-instance",
                )
                dw.save_dataset(dw.vessel_seg(slices, study.label, seg_ident), study_dir / "seg" / "vessels.dcm")
                n_dicom += 1
            else:
                write_nifti_pair(site_dir / "tof" / "nifti", patient_id=pid, study_label=label, study=study)
                n_nifti += 1
            counter += 1
            tick()

    grade_counts = [0] * 5
    grade_rows: list[tuple[str, int, str]] = []
    counter = 0
    n_op = n_png = 0
    for j, pid in enumerate(fundus_ids):
        prng = rng_for(seed, Stream.FUNDUS, site_index, j, 0)
        grade = int(prng.integers(0, 5))
        eyes = {}
        for k, (laterality, visit) in enumerate(fundus_plan(j, prng)):
            # The other eye may be one grade milder; a later visit may have progressed by one.
            image_grade = grade if k == 0 else (max(0, grade - int(prng.integers(0, 2))) if visit == 1
                                               else min(4, grade + int(prng.integers(0, 2))))
            start = time.perf_counter()
            if laterality not in eyes:
                eye_rng = rng_for(seed, Stream.FUNDUS, site_index, j, 1 if laterality == "R" else 2)
                eyes[laterality] = draw_fundus_eye(eye_rng, laterality=laterality)
            render = render_fundus(eyes[laterality], grade=image_grade, size=fundus_size,
                                   rng=rng_for(seed, Stream.FUNDUS, site_index, j, 10 + k))
            timings.fundus_seconds += time.perf_counter() - start
            timings.fundus_images += 1
            if counter % 2 == 0:
                ident = _identity(seed, site_id, institution, "fundus", j, k, pid)
                rel = f"dicom/image-{counter + 1:03d}.dcm"
                dw.save_dataset(dw.ophthalmic_photograph(render, ident, laterality=laterality), site_dir / "fundus" / rel)
                n_op += 1
            else:
                rel = f"png/{pid}_{laterality}_v{visit}.png"
                write_png(site_dir / "fundus" / rel, render.rgb)
                n_png += 1
            grade_rows.append((rel, image_grade, pid))
            grade_counts[image_grade] += 1
            counter += 1
            tick()
    write_grades_csv(site_dir / "fundus" / "grades.csv", grade_rows)
    log.info("site %s: %d TOF studies, %d fundus images", site_id, n_dicom + n_nifti, n_op + n_png)
    return SiteSummary(site_id, tuple(tof_ids), n_dicom, n_nifti, tuple(fundus_ids), n_op, n_png,
                       tuple(grade_counts))  # type: ignore[arg-type]


def planned_items(tof_patients: int, fundus_patients: int) -> int:
    """Number of studies plus images one site will generate (for the progress bar)."""
    tof = sum(tof_study_count(i) for i in range(tof_patients))
    fundus = sum(2 if j % 3 in (0, 1) else 1 for j in range(fundus_patients))
    return tof + fundus


def _identity(seed: int, site_id: str, institution: str, kind: str, patient: int, item: int, pid: str) -> dw.DicomIdentity:
    """Deterministic fake identity and UIDs for one study/image of one patient."""
    rng = rng_for(seed, Stream.IDENTITY, 9, patient, item, 1 if kind == "tof" else 2, _site_number(site_id))
    prng = rng_for(seed, Stream.IDENTITY, 8, patient, 1 if kind == "tof" else 2, _site_number(site_id))
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(prng.integers(0, 60 * 365)))
    study_day = _BASE_DATE + dt.timedelta(days=int(rng.integers(0, 700)))
    seconds = int(rng.integers(7 * 3600, 18 * 3600))
    return dw.DicomIdentity(
        patient_id=pid,
        patient_name=fake_patient_name(patient + 1),
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_sex=("F", "M")[int(prng.integers(0, 2))],
        study_uid=uid_for(seed, site_id, kind, patient, item, "study"),
        series_uid=uid_for(seed, site_id, kind, patient, item, "series"),
        frame_of_reference_uid=uid_for(seed, site_id, kind, patient, item, "frame-of-reference"),
        study_date=study_day.strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        accession_number=f"A{int(rng.integers(10**7, 10**8))}",
        institution=institution,
        instance_uid_key=f"{seed}/{site_id}/{kind}/{patient}/{item}/instance",
    )


def _site_number(site_id: str) -> int:
    return sum((ord(c) - 96) * 27**k for k, c in enumerate(reversed(site_id.rsplit("-", 1)[-1])))
