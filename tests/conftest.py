"""Shared fixtures: the phantom consortium on disk and small in-memory phantom records.

Owned by the phantoms/patching area; other areas use these fixtures, so keep them fast and stable.
Imports happen inside the fixtures so test sessions that do not use them never load pydicom,
highdicom or nibabel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from agent.phantoms.consortium import ConsortiumSummary
    from agent.records import FundusImage, LabeledVolume


@pytest.fixture(scope="session")
def phantom_consortium(tmp_path_factory: pytest.TempPathFactory) -> "ConsortiumSummary":
    """Three sites (hospital-a/b/c), seed 7, each with 3 TOF patients at 32^3 (4 studies: 2 DICOM
    MR series + SEG, 2 NIfTI pairs; patient index 1 has two studies, in different formats) and 6
    fundus patients at 128 px (10 images: 5 DICOM OP, 5 PNG, all in ``fundus/grades.csv``), plus
    ``configs/<site>.yaml``. Shared by the whole session: treat it as read-only and copy a site
    folder (and its config) before ingesting or modifying it."""
    from agent.phantoms.consortium import ConsortiumSpec, write_consortium

    spec = ConsortiumSpec(sites=3, seed=7, tof_patients=3, fundus_patients=6, volume_size=32, fundus_size=128)
    return write_consortium(tmp_path_factory.mktemp("phantoms"), spec, progress=False)


@pytest.fixture(scope="session")
def tiny_volumes() -> list["LabeledVolume"]:
    """Four 32^3 labelled TOF volumes from three patients (``tiny-p1`` has two studies)."""
    from agent.phantoms.in_memory import tof_volumes

    return tof_volumes(3, seed=11, size=32, repeat=(1,), prefix="tiny")


@pytest.fixture(scope="session")
def tiny_fundus() -> list["FundusImage"]:
    """Twelve 128 px fundus photographs of ten patients, grade = patient index mod 5 (patients 0
    and 5 have both eyes)."""
    from agent.phantoms.in_memory import fundus_images

    return fundus_images(10, seed=11, size=128, repeat=(0, 5), prefix="tiny")
