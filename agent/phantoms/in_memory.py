"""Phantom records generated in memory (no files): quick data for DP, patching and k-SALSA tests.

The same generators as the written consortium, returned directly as the records ingest produces
(:class:`agent.records.LabeledVolume`, :class:`agent.records.FundusImage`). Patient keys are
``"<prefix>-p<i>"``; patients listed in ``repeat`` get a second study/photograph.
"""

from __future__ import annotations

import numpy as np

from agent.phantoms.fundus_image import draw_fundus_eye, render_fundus
from agent.phantoms.seeding import Stream, rng_for
from agent.phantoms.tof_volume import ScannerProfile, TofGeometry, draw_tof_patient, follow_up, render_tof_study
from agent.records import FundusImage, LabeledVolume

# A site index no written consortium uses, so in-memory data never equal a site's files.
_MEMORY_SITE = 9_999


def tof_volumes(patients: int, *, seed: int, size: int = 32, repeat: tuple[int, ...] = (),
                prefix: str = "phantom") -> list[LabeledVolume]:
    """``patients`` TOF volumes (plus a follow-up for each index in ``repeat``), float32 images."""
    geometry = TofGeometry.cube(size)
    profile = ScannerProfile.draw(rng_for(seed, Stream.SITE, _MEMORY_SITE))
    volumes = []
    for i in range(patients):
        patient = draw_tof_patient(rng_for(seed, Stream.TOF, _MEMORY_SITE, i, 0), geometry)
        for s in range(2 if i in repeat else 1):
            if s:
                patient = follow_up(patient, rng_for(seed, Stream.TOF, _MEMORY_SITE, i, 100 + s))
            study = render_tof_study(patient, geometry, profile, rng_for(seed, Stream.TOF, _MEMORY_SITE, i, 1 + s))
            volumes.append(LabeledVolume(f"{prefix}-p{i}", study.image.astype(np.float32), study.label, study.spacing_mm))
    return volumes


def fundus_images(patients: int, *, seed: int, size: int = 128, repeat: tuple[int, ...] = (),
                  prefix: str = "phantom") -> list[FundusImage]:
    """One photograph per patient (grade = patient index mod 5), both eyes for indices in ``repeat``."""
    images = []
    for i in range(patients):
        grade = i % 5
        for k, laterality in enumerate(("R", "L") if i in repeat else ("R",)):
            eye = draw_fundus_eye(rng_for(seed, Stream.FUNDUS, _MEMORY_SITE, i, 1 + k), laterality=laterality)
            render = render_fundus(eye, grade=grade, size=size, rng=rng_for(seed, Stream.FUNDUS, _MEMORY_SITE, i, 10 + k))
            images.append(FundusImage(f"{prefix}-p{i}", render.rgb, grade))
    return images
