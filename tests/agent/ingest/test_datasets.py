"""Training records from an ingested phantom site: volumes with their exact labels, graded fundus
images, and patient keys that are stable per site secret and differ across secrets."""

from __future__ import annotations

import itertools
import shutil
from collections import Counter

import numpy as np
import pytest

from agent.config import parse_site_config
from agent.ingest.datasets import load_fundus_images, load_labeled_volumes
from agent.ingest.pipeline import run_ingest
from agent.phantoms.site_plan import tof_studies

FLIPS = [tuple(ax for ax, f in zip(range(3), bits) if f) for bits in itertools.product((0, 1), repeat=3)]


def _config(phantom, state):
    site = phantom.site_ids[0]
    site_dir = phantom.site_dir(site)
    raw = {
        "site_id": "datasets-test",
        "sources": [{"path": str(site_dir), "fundus_grades_csv": str(site_dir / "fundus" / "grades.csv")}],
        "state_dir": str(state),
        "privacy": {"max_epsilon": 8.0, "delta": 1e-5},
    }
    return parse_site_config(raw, base_dir=state.parent)


@pytest.fixture(scope="module")
def ingested(phantom_consortium, tmp_path_factory):
    cfg = _config(phantom_consortium, tmp_path_factory.mktemp("datasets") / "state")
    run_ingest(cfg)
    return cfg


def test_labeled_volumes_are_the_phantom_studies_with_their_exact_labels(ingested, phantom_consortium) -> None:
    spec = phantom_consortium.spec
    summary = phantom_consortium.site(phantom_consortium.site_ids[0])
    truth = [p.study for p in tof_studies(seed=spec.seed, site_index=0, tof_patients=spec.tof_patients, volume_size=spec.volume_size)]
    volumes = load_labeled_volumes(ingested, angio_only=True)
    assert len(volumes) == summary.tof_dicom_studies + summary.tof_nifti_studies == len(truth)
    matched = set()
    flips_used = set()
    for vol in volumes:
        hits = [(i, flip) for i, t in enumerate(truth) for flip in FLIPS
                if t.label.shape == vol.label.shape and np.array_equal(np.flip(t.label, flip) if flip else t.label, vol.label)]
        assert len(hits) >= 1, "label does not match any phantom study under an axis flip"
        i, flip = hits[0]
        matched.add(i)
        flips_used.add(flip)
        image = np.flip(truth[i].image, flip) if flip else truth[i].image
        assert np.corrcoef(image.ravel(), vol.image.ravel())[0, 1] > 0.99
        assert vol.spacing_mm == pytest.approx(truth[i].spacing_mm, rel=1e-5)
        assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
    assert matched == set(range(len(truth)))
    # DICOM (LPS) and NIfTI (RAS) studies share one physical frame, so one canonical flip fits all.
    assert len(flips_used) == 1, f"DICOM and NIfTI studies read back in different orientations: {flips_used}"
    # one patient has two studies in different formats: keys must join them
    assert len({v.patient_key for v in volumes}) == len(summary.tof_patient_ids)


def test_fundus_images_carry_the_csv_grades(ingested, phantom_consortium) -> None:
    summary = phantom_consortium.site(phantom_consortium.site_ids[0])
    images = load_fundus_images(ingested)
    assert len(images) == summary.fundus_dicom_images + summary.fundus_png_images
    assert Counter(i.grade for i in images) == {g: n for g, n in enumerate(summary.grade_counts) if n}
    assert len({i.patient_key for i in images}) == len(summary.fundus_patient_ids)
    assert all(i.rgb.shape == (phantom_consortium.spec.fundus_size,) * 2 + (3,) for i in images)
    assert len(load_fundus_images(ingested, include_dicom=False)) == summary.fundus_png_images


def test_patient_keys_are_stable_per_secret_and_differ_across_secrets(ingested, phantom_consortium, tmp_path) -> None:
    def keys(cfg):
        return {v.patient_key for v in load_labeled_volumes(cfg)} | {f.patient_key for f in load_fundus_images(cfg)}

    same_secret = _config(phantom_consortium, tmp_path / "same" / "state")
    shutil.copytree(ingested.state.keys, same_secret.state.keys)
    run_ingest(same_secret)
    other_secret = _config(phantom_consortium, tmp_path / "other" / "state")
    run_ingest(other_secret)
    assert keys(same_secret) == keys(ingested)
    assert keys(other_secret).isdisjoint(keys(ingested)) and len(keys(other_secret)) == len(keys(ingested))
