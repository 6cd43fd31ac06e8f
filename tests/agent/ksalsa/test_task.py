"""The ksalsa task at a site: policy refusals before any data is read, then a full release."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agent.ksalsa.baselines import Method
from agent.ksalsa.task import KsalsaRequest, SiteModels, run_ksalsa_task
from protocols.errors import BadInputError, EgressBlockedError, KAnonymityError, PolicyError, TaskRefusedError
from protocols.ledger import SignedClaim


def _save_models(site, G) -> SiteModels:  # noqa: ANN001
    from agent.inversion.encoder import EncoderConfig, ReStyleEncoder
    from agent.inversion.train import ENCODER_FORMAT
    from agent.stylegan.checkpoint import save_checkpoint

    models = SiteModels.default(site)
    save_checkpoint(models.generator, {"metadata": {}, "arch": G.cfg.to_dict(),
                                       "state": {"generator_ema": G.state_dict()}})
    cfg = EncoderConfig(resolution=G.cfg.resolution, num_ws=G.num_ws, w_dim=G.cfg.w_dim, width=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = ReStyleEncoder(cfg)
    save_checkpoint(models.encoder, {"metadata": {}, "encoder_config": dataclasses.asdict(cfg),
                                     "state": {"encoder": encoder.state_dict()}}, fmt=ENCODER_FORMAT)
    return models


def test_refused_when_the_task_is_not_accepted(site_factory) -> None:
    site = site_factory(accepted_tasks=["dpgan"])
    with pytest.raises(TaskRefusedError, match="task ksalsa is not accepted"):
        run_ksalsa_task(site, KsalsaRequest("run-1", 0, k=5))


def test_refused_when_k_is_below_the_site_min_k(site_factory) -> None:
    site = site_factory(min_k=6)
    # No images are passed and none are ingested: the refusal must come before any data access.
    with pytest.raises(KAnonymityError, match="k=5 is below the site's privacy.min_k=6"):
        run_ksalsa_task(site, KsalsaRequest("run-1", 0, k=5))


def test_refused_with_fewer_patients_than_k(site, tiny_fundus) -> None:
    with pytest.raises(KAnonymityError, match="10 distinct patients with fundus images, k=11"):
        run_ksalsa_task(site, KsalsaRequest("run-1", 0, k=11, method=Method.K_SAME_PIXEL), images=tiny_fundus)


def test_refused_below_min_patients(site_factory, tiny_fundus) -> None:
    site = site_factory(min_patients=20)
    with pytest.raises(PolicyError, match="min_patients=20"):
        run_ksalsa_task(site, KsalsaRequest("run-1", 0, k=3, method=Method.K_SAME_PIXEL), images=tiny_fundus)


def test_missing_models_are_named(site, tiny_fundus) -> None:
    with pytest.raises(BadInputError, match="StyleGAN generator checkpoint at stylegan.pt"):
        run_ksalsa_task(site, KsalsaRequest("run-1", 0, k=3), images=tiny_fundus)


def test_pixel_release_end_to_end(site_with_key, tiny_fundus) -> None:
    site, key = site_with_key
    outcome = run_ksalsa_task(site, KsalsaRequest("run-1", 1, k=3, method=Method.K_SAME_PIXEL), images=tiny_fundus)
    assert outcome.images.shape == (3, 128, 128, 3)  # 10 patients, k=3: groups of 3, 3, 4 patients
    assert sorted(outcome.release.cluster_sizes) == [3, 3, 4]
    claim = SignedClaim.from_bytes(outcome.claim.payload)
    claim.verify(key.public)
    assert claim.claim.kanon.cluster_sizes == outcome.release.cluster_sizes
    assert (outcome.release.folder / outcome.release.images[0].png).is_file()


@pytest.mark.parametrize("method", [Method.CENTROID, Method.KSALSA])
def test_latent_release_with_site_models(site, tiny_fundus, tiny_generator, method) -> None:
    models = _save_models(site, tiny_generator)
    outcome = run_ksalsa_task(site, KsalsaRequest("run-2", 0, k=4, method=method, steps=2), images=tiny_fundus,
                              models=models, sign=False)
    assert outcome.images.shape == (2, 32, 32, 3) and outcome.images.dtype == np.uint8
    assert all(n >= 4 for n in outcome.release.cluster_sizes)
    assert outcome.claim is None


def test_duplicate_images_across_patients_are_not_released(site, tiny_fundus) -> None:
    """The same photograph filed under three patients: its pixel average is the photograph itself."""
    from agent.records import FundusImage

    same = [FundusImage(f"dup-{i}", tiny_fundus[0].rgb, 1) for i in range(3)]
    with pytest.raises(EgressBlockedError, match="byte-exact copies of a real image"):
        run_ksalsa_task(site, KsalsaRequest("run-3", 0, k=3, method=Method.K_SAME_PIXEL), images=same, sign=False)
    assert not (site.state.outputs / "ksalsa").exists()


def test_reply_fields_carry_no_identifiers(site, tiny_fundus) -> None:
    request = KsalsaRequest("run-4", 0, k=5, method=Method.K_SAME_EIGEN)
    outcome = run_ksalsa_task(site, request, images=tiny_fundus, sign=False)
    fields = outcome.reply_fields(site.site_id, request)
    assert fields["cluster_sizes"] == [5, 5] and fields["count"] == 2
    assert "tiny-p" not in repr(fields)


@pytest.mark.parametrize(("fields", "match"), [
    ({"run_id": "../escape"}, "run_id: expected letters"),
    ({"k": 0}, "k >= 1"),
    ({"steps": -1}, "steps: expected 0.."),
])
def test_malformed_requests_are_refused(fields, match) -> None:
    base = {"run_id": "run-1", "round": 0, "k": 5}
    with pytest.raises(BadInputError, match=match):
        KsalsaRequest(**{**base, **fields})


def test_random_groups_use_the_site_secret_seed_and_say_so(site_factory, tiny_fundus) -> None:
    """privacy.ksalsa_groups=random: groups from a shuffle with a seed created once (0600, with the
    keys) and reused, so a second release groups the same patients together; the release says so."""
    import json
    import stat

    from agent.ksalsa.clustering import cluster_by_patient
    from agent.ksalsa.release import MANIFEST_NAME
    from agent.ksalsa.task import GROUPING_SEED_NAME, grouping_seed

    site = site_factory(ksalsa_groups="random")
    request = KsalsaRequest("run-5", 0, k=3, method=Method.K_SAME_PIXEL)
    first = run_ksalsa_task(site, request, images=tiny_fundus, sign=False)
    seed_file = site.state.keys / GROUPING_SEED_NAME
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    keys = [im.patient_key for im in tiny_fundus]
    expected = cluster_by_patient(np.zeros((len(keys), 1)), keys, k=3, grouping="random", seed=grouping_seed(site))
    manifest = json.loads((first.release.folder / MANIFEST_NAME).read_text())
    assert manifest["grouping"] == "random" and "at random" in manifest["guarantee"]
    assert "at random" in first.reply_fields(site.site_id, request)["guarantee"]
    nearest = run_ksalsa_task(site_factory(), dataclasses.replace(request, run_id="run-nearest"), images=tiny_fundus,
                              sign=False).images
    assert not np.array_equal(first.images, nearest)  # the shuffle, not the similarity clustering, made the groups
    again = run_ksalsa_task(site, dataclasses.replace(request, run_id="run-6"), images=tiny_fundus, sign=False)
    assert np.array_equal(first.images, again.images)
    assert list(first.release.cluster_sizes) == list(expected.patient_counts)
    seed_file.write_text("not a seed\n")
    with pytest.raises(BadInputError, match="not a seed"):
        run_ksalsa_task(site, request, images=tiny_fundus, sign=False)
    assert seed_file.read_text() == "not a seed\n"  # never replaced silently
