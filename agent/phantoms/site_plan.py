"""What one phantom site contains, generated in memory (no files): studies and photographs.

Which patients get several studies or images is fixed by rule so every site exercises
patient-level grouping:

- TOF patient ``i``: two studies (baseline + follow-up after a small head motion) when ``i % 3 == 1``,
  otherwise one.
- Fundus patient ``j``: both eyes when ``j % 3 == 0``; two visits of one eye when ``j % 3 == 1``;
  otherwise one photograph. The other eye may be one grade milder; a later visit may have
  progressed by one grade.

:mod:`agent.phantoms.site_writer` encodes these as files; tests regenerate them to compare with
what ingest reads back.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import numpy as np

from agent.phantoms.fundus_image import FundusRender, draw_fundus_eye, render_fundus
from agent.phantoms.seeding import Stream, rng_for
from agent.phantoms.tof_volume import ScannerProfile, TofGeometry, TofStudy, draw_tof_patient, follow_up, render_tof_study


@dataclasses.dataclass(frozen=True)
class PlannedTofStudy:
    """Study ``study_index`` (0 = baseline) of TOF patient ``patient_index``."""

    patient_index: int
    study_index: int
    study: TofStudy
    seconds: float  # rendering time (patient geometry included for the baseline)


@dataclasses.dataclass(frozen=True)
class PlannedFundusImage:
    """Photograph ``image_index`` of fundus patient ``patient_index``."""

    patient_index: int
    image_index: int
    laterality: str
    visit: int
    render: FundusRender
    seconds: float

    @property
    def grade(self) -> int:
        return self.render.grade


def tof_study_count(patient_index: int) -> int:
    """Number of TOF studies of patient ``patient_index``."""
    return 2 if patient_index % 3 == 1 else 1


def fundus_image_count(patient_index: int) -> int:
    """Number of photographs of fundus patient ``patient_index``."""
    return 1 if patient_index % 3 == 2 else 2


def planned_items(tof_patients: int, fundus_patients: int) -> int:
    """Number of studies plus images one site holds (for progress bars)."""
    return sum(map(tof_study_count, range(tof_patients))) + sum(map(fundus_image_count, range(fundus_patients)))


def tof_studies(*, seed: int, site_index: int, tof_patients: int, volume_size: int) -> Iterator[PlannedTofStudy]:
    """Every TOF study of one site, in patient then study order."""
    profile = ScannerProfile.draw(rng_for(seed, Stream.SITE, site_index))
    geometry = TofGeometry.cube(volume_size)
    for i in range(tof_patients):
        start = time.perf_counter()
        patient = draw_tof_patient(rng_for(seed, Stream.TOF, site_index, i, 0), geometry)
        for s in range(tof_study_count(i)):
            if s > 0:
                patient = follow_up(patient, rng_for(seed, Stream.TOF, site_index, i, 100 + s))
            study = render_tof_study(patient, geometry, profile, rng_for(seed, Stream.TOF, site_index, i, 1 + s))
            yield PlannedTofStudy(i, s, study, time.perf_counter() - start)
            start = time.perf_counter()


def fundus_images(*, seed: int, site_index: int, fundus_patients: int, fundus_size: int) -> Iterator[PlannedFundusImage]:
    """Every fundus photograph of one site, in patient then image order."""
    for j in range(fundus_patients):
        prng = rng_for(seed, Stream.FUNDUS, site_index, j, 0)
        grade = int(prng.integers(0, 5))
        eyes = {}
        for k, (laterality, visit) in enumerate(_photographs(j, prng)):
            image_grade = grade if k == 0 else (max(0, grade - int(prng.integers(0, 2))) if visit == 1
                                               else min(4, grade + int(prng.integers(0, 2))))
            start = time.perf_counter()
            if laterality not in eyes:
                eye_rng = rng_for(seed, Stream.FUNDUS, site_index, j, 1 if laterality == "R" else 2)
                eyes[laterality] = draw_fundus_eye(eye_rng, laterality=laterality)
            render = render_fundus(eyes[laterality], grade=image_grade, size=fundus_size,
                                   rng=rng_for(seed, Stream.FUNDUS, site_index, j, 10 + k))
            yield PlannedFundusImage(j, k, laterality, visit, render, time.perf_counter() - start)


def _photographs(patient_index: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(laterality, visit) of each photograph of a fundus patient."""
    if patient_index % 3 == 0:
        return [("R", 1), ("L", 1)]
    eye = "R" if rng.random() < 0.5 else "L"
    return [(eye, 1), (eye, 2)] if patient_index % 3 == 1 else [(eye, 1)]
