"""Release: PNG + DICOM OP marked synthetic, manifest without identifiers, signed k-anonymity claim."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from agent.ksalsa.clustering import cluster_by_patient
from agent.ksalsa.release import MANIFEST_NAME, majority_grade, require_k, sign_kanon_claim, write_release
from protocols.errors import KAnonymityError
from protocols.ledger import MechanismKind
from protocols.messages import array_sha256
from protocols.tasks import Task


def _inputs(n_patients: int = 7, k: int = 3):
    keys = [f"patient-{i:02d}" for i in range(n_patients)] + ["patient-00"]
    grades = [i % 3 for i in range(n_patients)] + [0]
    codes = np.random.default_rng(4).normal(size=(len(keys), 5))
    clustering = cluster_by_patient(codes, keys, k=k)
    images = np.random.default_rng(5).integers(0, 256, (len(clustering.groups), 16, 16, 3), dtype=np.uint8)
    return images, clustering, keys, grades


def test_release_refuses_k_below_the_site_minimum(tmp_path) -> None:
    images, clustering, keys, grades = _inputs(k=3)
    with pytest.raises(KAnonymityError, match="k=3 is below the site's privacy.min_k=5"):
        write_release(images, clustering, grades=grades, patient_keys=keys, k=3, min_k=5, method="ksalsa",
                      site_id="hospital-k", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_release_refuses_a_claim_stronger_than_the_clustering(tmp_path) -> None:
    images, clustering, keys, grades = _inputs(k=2)
    with pytest.raises(KAnonymityError, match="guarantees k=2, the release claims k=3"):
        write_release(images, clustering, grades=grades, patient_keys=keys, k=3, min_k=2, method="ksalsa",
                      site_id="hospital-k", out_dir=tmp_path)


def test_release_writes_png_dicom_and_manifest(tmp_path) -> None:
    images, clustering, keys, grades = _inputs()
    release = write_release(images, clustering, grades=grades, patient_keys=keys, k=3, min_k=3, method="ksalsa",
                            site_id="hospital-k", out_dir=tmp_path, run_id="run-1", round=2)
    assert release.cluster_sizes == clustering.patient_counts
    assert release.images_sha256 == array_sha256(images)
    text = (tmp_path / MANIFEST_NAME).read_text()
    assert "patient-" not in text  # no pseudonym leaves in the manifest
    manifest = json.loads(text)
    assert manifest["k"] == 3 and len(manifest["images"]) == len(clustering.groups)
    for item, group, rgb in zip(release.images, clustering.groups, images):
        from PIL import Image

        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / item.png)), rgb)
        ds = pydicom.dcmread(tmp_path / item.dicom)
        assert ds.Modality == "OP" and ds.PatientIdentityRemoved == "YES"
        assert "k-anonymity" in ds.ImageComments and "Synthetic" in ds.DerivationDescription
        np.testing.assert_array_equal(ds.pixel_array, rgb)
        assert item.num_patients == group.num_patients >= 3
        assert item.num_images == group.num_images
    from agent.export.validation import have_dciodvfy, validate_file

    if have_dciodvfy():  # the CI image installs dicom3tools; skip the check where it is absent
        findings = validate_file(tmp_path / release.images[0].dicom)
        assert findings.ok, findings.errors


def test_majority_grade_counts_patients_not_images() -> None:
    # One patient with five grade-0 images, two patients with grade 4: the majority is 4.
    assert majority_grade([0] * 5 + [4, 4], ["a"] * 5 + ["b", "c"]) == 4
    assert majority_grade([1, 2], ["a", "b"]) == 2  # ties go to the more severe grade
    assert majority_grade([None, None], ["a", "b"]) is None


def test_require_k() -> None:
    require_k(5, min_k=5)
    with pytest.raises(KAnonymityError, match="below the site's privacy.min_k=6"):
        require_k(5, min_k=6)


def test_signed_kanon_claim(tmp_path, site_with_key) -> None:
    site, key = site_with_key
    images, clustering, keys, grades = _inputs()
    release = write_release(images, clustering, grades=grades, patient_keys=keys, k=3, min_k=3, method="ksalsa",
                            site_id=site.site_id, out_dir=tmp_path / "rel")
    pending = sign_kanon_claim(site, release, run_id="run-1", round=0)
    assert pending is not None
    from agent.ledger import SiteClaimLog, claim_log_path
    from protocols.ledger import SignedClaim

    signed = SignedClaim.from_bytes(pending.payload)
    signed.verify(key.public)
    claim = signed.claim
    assert claim.task is Task.KSALSA and claim.mechanism.kind is MechanismKind.K_ANONYMITY
    assert claim.epsilon == 0.0
    assert (claim.kanon.k, claim.kanon.min_k, claim.kanon.cluster_sizes) == (3, 3, clustering.patient_counts)
    assert claim.artifacts[0].sha256 == release.images_sha256
    assert SiteClaimLog(claim_log_path(site.state.root)).claims() == []  # not recorded until committed
    pending.commit()
    assert len(SiteClaimLog(claim_log_path(site.state.root)).claims()) == 1


def test_no_key_means_no_claim(tmp_path, site) -> None:
    images, clustering, keys, grades = _inputs()
    release = write_release(images, clustering, grades=grades, patient_keys=keys, k=3, min_k=3, method="ksalsa",
                            site_id=site.site_id, out_dir=tmp_path / "rel")
    assert sign_kanon_claim(site, release, run_id="run-1", round=0) is None
