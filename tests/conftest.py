"""Shared fixtures: the phantom consortium on disk and small in-memory phantom records.

Owned by the phantoms/patching area; other areas use these fixtures, so keep them fast and stable.
"""

from __future__ import annotations

import pytest

from agent.phantoms.consortium import ConsortiumSpec, ConsortiumSummary, write_consortium
from agent.phantoms.in_memory import fundus_images, tof_volumes
from agent.records import FundusImage, LabeledVolume

PHANTOM_SPEC = ConsortiumSpec(sites=3, seed=7, tof_patients=3, fundus_patients=6, volume_size=32, fundus_size=128)


@pytest.fixture(scope="session")
def phantom_consortium(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumSummary:
    """Three sites (hospital-a/b/c), each with 3 TOF patients (4 studies: 2 DICOM+SEG, 2 NIfTI,
    one patient with two studies in different formats) at 32^3 and 6 fundus patients (10 images:
    5 DICOM OP, 5 PNG, grades.csv) at 128 px, plus ``configs/<site>.yaml``. Treat it as read-only
    (it is shared by the whole session); copy a site folder to modify it."""
    return write_consortium(tmp_path_factory.mktemp("phantoms"), PHANTOM_SPEC, progress=False)


@pytest.fixture(scope="session")
def tiny_volumes() -> list[LabeledVolume]:
    """Four 32^3 labelled TOF volumes from three patients (``tiny-p1`` has two studies)."""
    return tof_volumes(3, seed=11, size=32, repeat=(1,), prefix="tiny")


@pytest.fixture(scope="session")
def tiny_fundus() -> list[FundusImage]:
    """Twelve 128 px fundus photographs of ten patients, grades 0-4 (patients 0 and 5: both eyes)."""
    return fundus_images(10, seed=11, size=128, repeat=(0, 5), prefix="tiny")
