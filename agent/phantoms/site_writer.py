"""Write one phantom site: TOF studies (DICOM or NIfTI) and fundus images (DICOM OP or PNG).

The content comes from :mod:`agent.phantoms.site_plan`; here each study or image gets exactly one
file format, alternating in site order so every site exercises both ingest paths and no volume or
photograph is written twice: TOF studies alternate DICOM (MR series + SEG) and NIfTI (image +
label); fundus images alternate DICOM OP and PNG. ``fundus/grades.csv`` lists every fundus image
(PNG and DICOM) with its grade and patient ID.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Callable

from agent.phantoms import dicom_writers as dw
from agent.phantoms.nifti_writers import write_nifti_pair
from agent.phantoms.png_writers import write_grades_csv, write_png
from agent.phantoms.seeding import Stream, fake_patient_ids, fake_patient_name, rng_for, uid_for
from agent.phantoms.site_plan import fundus_images, tof_studies

log = logging.getLogger(__name__)

_BASE_DATE = dt.date(2024, 1, 8)


@dataclasses.dataclass(frozen=True)
class SiteSummary:
    """What was written for one site. Patient IDs are fake; still, describe() never prints them."""

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
    """Wall-clock generation time accumulated over a run (rendering only, not file writing)."""

    tof_seconds: float = 0.0
    tof_volumes: int = 0
    fundus_seconds: float = 0.0
    fundus_images: int = 0


def write_site(root: Path, *, seed: int, site_index: int, site_id: str, tof_patients: int, fundus_patients: int,
               volume_size: int, fundus_size: int, timings: Timings, tick: Callable[[], None]) -> SiteSummary:
    """Generate and write every file of one site under ``root / site_id``."""
    site_dir = root / site_id
    institution = f"Phantom Hospital {site_id.rsplit('-', 1)[-1].upper()}"
    tof_ids = fake_patient_ids(seed, site_index, site_id, tof_patients, kind=Stream.TOF)
    fundus_ids = fake_patient_ids(seed, site_index, site_id, fundus_patients, kind=Stream.FUNDUS)

    n_dicom = n_nifti = 0
    for counter, planned in enumerate(tof_studies(seed=seed, site_index=site_index, tof_patients=tof_patients,
                                                  volume_size=volume_size)):
        timings.tof_seconds += planned.seconds
        timings.tof_volumes += 1
        i, s, pid = planned.patient_index, planned.study_index, tof_ids[planned.patient_index]
        if counter % 2 == 0:
            ident = _identity(seed, site_id, institution, "tof", i, s, pid)
            slices = dw.mr_series(planned.study, ident)
            study_dir = site_dir / "tof" / "dicom" / f"study-{counter + 1:03d}"
            for k, ds in enumerate(slices):
                dw.save_dataset(ds, study_dir / "mr" / f"slice-{k + 1:04d}.dcm")
            seg_ident = dataclasses.replace(
                ident,
                series_uid=uid_for(seed, site_id, "tof", i, s, "seg-series"),
                instance_uid_key=f"anonfed-phantom/{seed}/{site_id}/tof/{i}/{s}/seg-instance",
            )
            dw.save_dataset(dw.vessel_seg(slices, planned.study.label, seg_ident), study_dir / "seg" / "vessels.dcm")
            n_dicom += 1
        else:
            write_nifti_pair(site_dir / "tof" / "nifti", patient_id=pid, study_label=f"s{s + 1}", study=planned.study)
            n_nifti += 1
        tick()

    grade_counts = [0] * 5
    grade_rows: list[tuple[str, int, str]] = []
    n_op = n_png = 0
    for counter, photo in enumerate(fundus_images(seed=seed, site_index=site_index, fundus_patients=fundus_patients,
                                                  fundus_size=fundus_size)):
        timings.fundus_seconds += photo.seconds
        timings.fundus_images += 1
        pid = fundus_ids[photo.patient_index]
        if counter % 2 == 0:
            ident = _identity(seed, site_id, institution, "fundus", photo.patient_index, photo.image_index, pid)
            rel = f"dicom/image-{counter + 1:03d}.dcm"
            ds = dw.ophthalmic_photograph(photo.render, ident, laterality=photo.laterality)
            dw.save_dataset(ds, site_dir / "fundus" / rel)
            n_op += 1
        else:
            rel = f"png/{pid}_{photo.laterality}_v{photo.visit}.png"
            write_png(site_dir / "fundus" / rel, photo.render.rgb)
            n_png += 1
        grade_rows.append((rel, photo.grade, pid))
        grade_counts[photo.grade] += 1
        tick()
    write_grades_csv(site_dir / "fundus" / "grades.csv", grade_rows)
    log.info("site %s: %d TOF studies, %d fundus images", site_id, n_dicom + n_nifti, n_op + n_png)
    return SiteSummary(site_id, tuple(tof_ids), n_dicom, n_nifti, tuple(fundus_ids), n_op, n_png,
                       tuple(grade_counts))  # type: ignore[arg-type]


def _identity(seed: int, site_id: str, institution: str, kind: str, patient: int, item: int, pid: str) -> dw.DicomIdentity:
    """Deterministic fake identity and UIDs for one study/image of one patient."""
    kind_code = 1 if kind == "tof" else 2
    rng = rng_for(seed, Stream.IDENTITY, 9, patient, item, kind_code, _site_number(site_id))
    prng = rng_for(seed, Stream.IDENTITY, 8, patient, kind_code, _site_number(site_id))
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
        instance_uid_key=f"anonfed-phantom/{seed}/{site_id}/{kind}/{patient}/{item}/instance",
    )


def _site_number(site_id: str) -> int:
    return sum((ord(c) - 96) * 27**k for k, c in enumerate(reversed(site_id.rsplit("-", 1)[-1])))
