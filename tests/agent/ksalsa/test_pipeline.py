"""make_averages with an optimising inverter and with precomputed W+ codes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent.inversion.encoder import EncoderConfig, ReStyleEncoder
from agent.inversion.invert import OptimisationSettings
from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
from agent.ksalsa.baselines import Method
from agent.ksalsa.pipeline import Inverter, make_averages, prepare_images
from protocols.errors import BadInputError

PIXEL_ONLY = ReconstructionWeights(feature=0.0, latent=0.0)


def _encoder(G: nn.Module) -> ReStyleEncoder:
    cfg = EncoderConfig(resolution=G.cfg.resolution, num_ws=G.num_ws, w_dim=G.cfg.w_dim, width=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ReStyleEncoder(cfg).eval().requires_grad_(False)


def test_latent_optimisation_fits_the_images_better_than_the_encoder(tiny_generator: nn.Module, tiny_fundus) -> None:
    G = tiny_generator
    x = prepare_images(tiny_fundus[:4], G.cfg.resolution)
    loss = ReconstructionLoss(None, PIXEL_ONLY)
    plain = Inverter(G, _encoder(G), iterations=2)
    tuned = Inverter(G, _encoder(G), iterations=2, optimisation=OptimisationSettings(steps=30), loss=loss)
    with torch.no_grad():
        before = loss(G.synthesis(plain.invert(x)), x).mean()
        after = loss(G.synthesis(tuned.invert(x)), x).mean()
    assert after < 0.7 * before
    assert all(p.grad is None for p in G.parameters())


def test_optimisation_without_a_loss_is_refused(tiny_generator: nn.Module) -> None:
    with pytest.raises(BadInputError, match="reconstruction loss"):
        Inverter(tiny_generator, _encoder(tiny_generator), optimisation=OptimisationSettings(steps=5))


def test_precomputed_codes_give_the_same_release_as_inverting_inside(tiny_generator: nn.Module, tiny_fundus) -> None:
    G = tiny_generator
    inverter = Inverter(G, _encoder(G), iterations=2)
    ws = inverter.invert(prepare_images(tiny_fundus, G.cfg.resolution))
    inside = make_averages(tiny_fundus, method=Method.CENTROID, k=3, inverter=inverter)
    shared = make_averages(tiny_fundus, method=Method.CENTROID, k=3, inverter=inverter, ws=ws)
    assert inside.clustering.groups == shared.clustering.groups
    assert (inside.images == shared.images).all()
    with pytest.raises(BadInputError, match="one row per image"):
        make_averages(tiny_fundus, method=Method.CENTROID, k=3, inverter=inverter, ws=ws[:-1])


def test_full_shrink_releases_the_site_mean_for_every_group(tiny_generator: nn.Module, tiny_fundus, lite0: nn.Module) -> None:
    from agent.ksalsa.baselines import patient_weights, to_uint8
    from agent.ksalsa.style_alignment import AlignmentSettings

    G = tiny_generator
    inverter = Inverter(G, _encoder(G), iterations=2)
    ws = inverter.invert(prepare_images(tiny_fundus, G.cfg.resolution))
    # psi=0, no alignment steps: every group starts (and stays) at the patient-weighted site mean.
    out = make_averages(tiny_fundus, method=Method.KSALSA, k=3, inverter=inverter, features=lite0, ws=ws,
                        settings=AlignmentSettings(steps=0, shrink=0.0))
    assert len(out.clustering.groups) >= 2
    assert all((im == out.images[0]).all() for im in out.images)
    pw = torch.as_tensor(patient_weights([im.patient_key for im in tiny_fundus]), dtype=ws.dtype)
    with torch.no_grad():
        site_mean = G.synthesis((ws * pw.view(-1, 1, 1)).sum(0, keepdim=True), noise_mode="const")
    assert abs(to_uint8(site_mean)[0].astype(int) - out.images[0].astype(int)).max() <= 1


def test_site_style_grams_are_computed_once_per_release_and_shared_by_every_group(
        tiny_generator: nn.Module, tiny_fundus, lite0: nn.Module, monkeypatch) -> None:
    import agent.ksalsa.pipeline as pipeline
    from agent.ksalsa.baselines import patient_weights
    from agent.ksalsa.style_alignment import AlignmentFeatures, AlignmentSettings, site_style_grams

    G = tiny_generator
    inverter = Inverter(G, _encoder(G), iterations=2)
    ws = inverter.invert(prepare_images(tiny_fundus, G.cfg.resolution))
    settings = AlignmentSettings(steps=2, shrink=0.8, content_target="start", style_target="site")
    computed, passed = [], []

    def counting_site_grams(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        computed.append(site_style_grams(*args, **kwargs))
        return computed[-1]

    def recording_align(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        passed.append(kwargs["site_grams"])
        return align(*args, **kwargs)

    align = pipeline.align_group
    monkeypatch.setattr(pipeline, "site_style_grams", counting_site_grams)
    monkeypatch.setattr(pipeline, "align_group", recording_align)
    out = make_averages(tiny_fundus, method=Method.KSALSA, k=3, inverter=inverter, features=lite0, ws=ws, settings=settings)
    assert len(computed) == 1 and len(passed) == len(out.clustering.groups) >= 2
    assert all(p is computed[0] for p in passed)  # the same target whichever group is aligned
    # ... and it is the patient-weighted mean over the whole release (the anchor's population and weights).
    pw = patient_weights([im.patient_key for im in tiny_fundus]).tolist()
    assert torch.allclose(computed[0], site_style_grams(G, ws, pw, AlignmentFeatures(lite0, settings)), rtol=1e-5)


def test_site_style_equals_pooled_style_when_the_release_is_one_group(tiny_generator: nn.Module, tiny_fundus,
                                                                      lite0: nn.Module) -> None:
    from agent.ksalsa.style_alignment import AlignmentSettings

    G = tiny_generator
    inverter = Inverter(G, _encoder(G), iterations=2)
    ws = inverter.invert(prepare_images(tiny_fundus, G.cfg.resolution))
    patients = len({im.patient_key for im in tiny_fundus})
    outs = [make_averages(tiny_fundus, method=Method.KSALSA, k=patients, inverter=inverter, features=lite0, ws=ws,
                          settings=AlignmentSettings(steps=3, content_target="start", style_target=style))
            for style in ("pooled", "site")]
    assert len(outs[0].clustering.groups) == 1
    assert abs(outs[0].images.astype(int) - outs[1].images.astype(int)).max() <= 1
