"""End to end on one phantom site: files -> ingest -> records -> patches, checked against the truth.

The phantom generator is re-run in memory and every ingested volume must equal a generated study
voxel for voxel (up to the in-plane flips of the LPS -> RAS canonical orientation), whichever of
the two formats (DICOM MR + SEG, or NIfTI) carried it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from agent.config import load_site_config
from agent.ingest.datasets import load_fundus_images, load_labeled_volumes
from agent.ingest.pipeline import run_ingest
from agent.patching.patches import extract_patches
from agent.phantoms.consortium import ConsortiumSummary
from agent.phantoms.site_plan import fundus_images, tof_studies

SITE, SITE_INDEX = "hospital-c", 2


@pytest.fixture(scope="module")
def ingested_site(phantom_consortium: ConsortiumSummary, tmp_path_factory: pytest.TempPathFactory):
    # Work on a copy: the session fixture is shared and must stay untouched.
    root = tmp_path_factory.mktemp("ingest-copy")
    shutil.copytree(phantom_consortium.site_dir(SITE), root / SITE)
    (root / "configs").mkdir()
    shutil.copy(phantom_consortium.config_path(SITE), root / "configs" / f"{SITE}.yaml")
    cfg = load_site_config(root / "configs" / f"{SITE}.yaml")
    run_ingest(cfg)
    return cfg


def _matches_up_to_flips(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and any(
        np.array_equal(a[:, ::fy, ::fx], b) for fy in (1, -1) for fx in (1, -1)
    )


def test_ingested_volumes_equal_the_generated_studies(ingested_site, phantom_consortium: ConsortiumSummary) -> None:
    spec = phantom_consortium.spec
    truth = list(tof_studies(seed=spec.seed, site_index=SITE_INDEX, tof_patients=spec.tof_patients, volume_size=spec.volume_size))
    volumes = load_labeled_volumes(ingested_site)
    assert len(volumes) == len(truth)
    for volume in volumes:
        hits = [t for t in truth if _matches_up_to_flips(volume.label, t.study.label)]
        assert hits, "an ingested label matches no generated study"
        assert any(_matches_up_to_flips(volume.image, t.study.image.astype(np.float32)) for t in hits)
        assert np.allclose(volume.spacing_mm, hits[0].study.spacing_mm)
    # Patient grouping survives ingest: the two studies of one patient share a key.
    keys = [v.patient_key for v in volumes]
    assert len(set(keys)) == spec.tof_patients and len(keys) == spec.tof_patients + 1


def test_patches_from_ingested_volumes(ingested_site) -> None:
    volumes = load_labeled_volumes(ingested_site)
    patches = extract_patches(volumes, size=16, per_volume=10, rng=np.random.default_rng(0))
    assert patches.num_patients == len({v.patient_key for v in volumes})
    assert np.all(patches.images[patches.vessel_centred, 1, 8, 8] == 1.0)


def test_ingested_fundus_images_carry_grades_and_patients(ingested_site, phantom_consortium: ConsortiumSummary) -> None:
    spec = phantom_consortium.spec
    truth = list(fundus_images(seed=spec.seed, site_index=SITE_INDEX, fundus_patients=spec.fundus_patients, fundus_size=spec.fundus_size))
    images = load_fundus_images(ingested_site, graded_only=True)
    assert len(images) == len(truth)
    assert len({im.patient_key for im in images}) == spec.fundus_patients
    for image in images:
        match = [t for t in truth if np.array_equal(t.render.rgb, image.rgb)]
        assert len(match) == 1 and match[0].grade == image.grade
