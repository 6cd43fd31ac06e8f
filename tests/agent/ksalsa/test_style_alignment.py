"""Local style alignment: the loss falls, targets are computed once, only the W+ code moves."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from agent.ksalsa.style_alignment import (AlignmentFeatures, AlignmentSettings, align_group, alignment_loss, group_targets,
                                         site_style_grams)
from protocols.errors import BadInputError


class CountingExtractor(nn.Module):
    """Wraps a feature network and records the batch size of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.batches.append(images.shape[0])
        return self.inner(images)


def test_loss_decreases_and_targets_are_computed_once(tiny_generator: nn.Module, lite0: nn.Module,
                                                      member_codes: torch.Tensor) -> None:
    counting = CountingExtractor(lite0)
    settings = AlignmentSettings(steps=30, style_weight=1e-2)
    before = [p.detach().clone() for p in tiny_generator.parameters()]
    result = align_group(tiny_generator, member_codes, [0.2] * 5, AlignmentFeatures(counting, settings))
    assert len(result.losses) == 30
    assert min(result.losses[-5:]) < 0.8 * result.losses[0]
    # One call on the 5 members (targets), then one call on the single output per step.
    assert counting.batches == [5] + [1] * 30
    assert result.ws.shape == (1, *member_codes.shape[1:])
    assert result.image.shape == (1, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_generator.parameters()))
    assert all(p.grad is None for p in tiny_generator.parameters())
    assert result.times.steps == 30 and result.times.generator > 0 and result.times.features > 0


def test_alignment_moves_the_output_towards_the_members(tiny_generator: nn.Module, lite0: nn.Module,
                                                        member_codes: torch.Tensor) -> None:
    features = AlignmentFeatures(lite0, AlignmentSettings(steps=25))
    targets = group_targets(tiny_generator, member_codes, [0.2] * 5, features)
    centroid = member_codes.mean(dim=0, keepdim=True)
    with torch.no_grad():
        start_content = alignment_loss(tiny_generator.synthesis(centroid), targets, features)[1]
    result = align_group(tiny_generator, member_codes, [0.2] * 5, features)
    with torch.no_grad():
        end_content = alignment_loss(result.image, targets, features)[1]
    assert end_content < start_content


def test_style_term_is_zero_for_an_identical_image(tiny_generator: nn.Module, lite0: nn.Module,
                                                   member_codes: torch.Tensor) -> None:
    features = AlignmentFeatures(lite0, AlignmentSettings())
    one = member_codes[:1]
    targets = group_targets(tiny_generator, one, [1.0], features)
    with torch.no_grad():
        _, content, style = alignment_loss(tiny_generator.synthesis(one), targets, features)
    assert float(content) == pytest.approx(0.0, abs=1e-5)
    assert float(style) == pytest.approx(0.0, abs=1e-3)


def test_codes_that_do_not_fit_the_generator_are_refused(tiny_generator: nn.Module, lite0: nn.Module) -> None:
    features = AlignmentFeatures(lite0, AlignmentSettings(steps=1))
    with pytest.raises(BadInputError, match="member_ws: expected"):
        align_group(tiny_generator, torch.zeros(2, 3, 32), [0.5, 0.5], features)


def test_a_grid_finer_than_the_style_map_is_refused(tiny_generator: nn.Module, lite0: nn.Module,
                                                    member_codes: torch.Tensor) -> None:
    features = AlignmentFeatures(lite0, AlignmentSettings(steps=1, grid=32))
    with pytest.raises(BadInputError, match="smaller than the 32x32 patch grid"):
        align_group(tiny_generator, member_codes, [0.2] * 5, features)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(tiny_generator: nn.Module, lite0: nn.Module, member_codes: torch.Tensor) -> None:
    G = tiny_generator.cuda()
    features = AlignmentFeatures(lite0.cuda(), AlignmentSettings(steps=3))
    result = align_group(G, member_codes.cuda(), [0.2] * 5, features)
    assert result.ws.is_cuda


# -- privacy options (not in the paper; defaults keep the published method) ------------------------
def test_privacy_options_are_validated() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(BadInputError, match="shrink"):
            AlignmentSettings(shrink=bad)
    with pytest.raises(BadInputError, match="content_target"):
        AlignmentSettings(content_target="centroid")
    with pytest.raises(BadInputError, match="shrink_layers"):
        AlignmentSettings(shrink=0.5, shrink_layers=0)
    with pytest.raises(BadInputError, match="needs shrink < 1"):  # would silently do nothing
        AlignmentSettings(shrink_layers=4)
    assert AlignmentSettings().shrink == 1.0 and AlignmentSettings().content_target == "members"


def test_shrink_needs_an_anchor(tiny_generator: nn.Module, lite0: nn.Module, member_codes: torch.Tensor) -> None:
    features = AlignmentFeatures(lite0, AlignmentSettings(steps=0, shrink=0.5))
    with pytest.raises(BadInputError, match="anchor"):
        align_group(tiny_generator, member_codes, [0.2] * 5, features)


def test_shrink_starts_between_the_site_mean_and_the_group_mean(tiny_generator: nn.Module, lite0: nn.Module,
                                                                member_codes: torch.Tensor) -> None:
    anchor = torch.zeros(1, *member_codes.shape[1:])
    centroid = member_codes.mean(dim=0, keepdim=True)
    for psi in (1.0, 0.6, 0.0):
        # steps=0: the output is the image of the (shrunk) start code.
        result = align_group(tiny_generator, member_codes, [0.2] * 5,
                             AlignmentFeatures(lite0, AlignmentSettings(steps=0, shrink=psi)), anchor=anchor)
        assert torch.allclose(result.ws, psi * centroid, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(result.image, tiny_generator.synthesis(psi * centroid, noise_mode="const"), atol=1e-5)


def test_layer_shrink_damps_only_the_coarse_entries(tiny_generator: nn.Module, lite0: nn.Module,
                                                    member_codes: torch.Tensor) -> None:
    anchor = torch.zeros(1, *member_codes.shape[1:])
    centroid = member_codes.mean(dim=0, keepdim=True)
    settings = AlignmentSettings(steps=0, shrink=0.5, shrink_layers=2)
    result = align_group(tiny_generator, member_codes, [0.2] * 5, AlignmentFeatures(lite0, settings), anchor=anchor)
    assert torch.allclose(result.ws[:, :2], 0.5 * centroid[:, :2], atol=1e-6)
    assert torch.allclose(result.ws[:, 2:], centroid[:, 2:], atol=1e-6)
    full = AlignmentSettings(steps=0, shrink=0.5, shrink_layers=member_codes.shape[1])  # every entry: plain shrink
    result = align_group(tiny_generator, member_codes, [0.2] * 5, AlignmentFeatures(lite0, full), anchor=anchor)
    assert torch.allclose(result.ws, 0.5 * centroid, atol=1e-6)
    too_many = AlignmentSettings(steps=0, shrink=0.5, shrink_layers=member_codes.shape[1] + 1)
    with pytest.raises(BadInputError, match="shrink layers"):
        align_group(tiny_generator, member_codes, [0.2] * 5, AlignmentFeatures(lite0, too_many), anchor=anchor)


def test_content_target_start_uses_only_the_start_image(tiny_generator: nn.Module, lite0: nn.Module,
                                                        member_codes: torch.Tensor) -> None:
    features = AlignmentFeatures(lite0, AlignmentSettings(steps=10, content_target="start"))
    centroid = member_codes.mean(dim=0, keepdim=True)
    targets = group_targets(tiny_generator, member_codes, [0.2] * 5, features, content_ws=centroid)
    assert targets.content.shape[0] == 1 and targets.content_weights.tolist() == [1.0]
    assert targets.grams.shape[0] == 5  # style still from every member
    with torch.no_grad():
        _, content, _ = alignment_loss(tiny_generator.synthesis(centroid, noise_mode="const"), targets, features)
    assert float(content) == pytest.approx(0.0, abs=1e-5)  # the start is its own content target
    with pytest.raises(BadInputError, match="content_ws"):
        group_targets(tiny_generator, member_codes, [0.2] * 5, features, content_ws=member_codes)
    result = align_group(tiny_generator, member_codes, [0.2] * 5, features)
    assert len(result.losses) == 10 and result.ws.shape == centroid.shape


def test_pooled_style_targets_the_members_mean_gram_per_position(tiny_generator: nn.Module, lite0: nn.Module,
                                                                 member_codes: torch.Tensor) -> None:
    with pytest.raises(BadInputError, match="style_target"):
        AlignmentSettings(style_target="mean")
    per_member = AlignmentFeatures(lite0, AlignmentSettings())
    pooled = AlignmentFeatures(lite0, AlignmentSettings(style_target="pooled", steps=5))
    weights = [0.1, 0.2, 0.3, 0.2, 0.2]
    t_members = group_targets(tiny_generator, member_codes, weights, per_member)
    t_pooled = group_targets(tiny_generator, member_codes, weights, pooled)
    w = torch.tensor(weights).view(-1, 1, 1, 1)
    assert t_pooled.grams.shape == (1, *t_members.grams.shape[1:])
    assert torch.allclose(t_pooled.grams[0], (t_members.grams * w).sum(0), rtol=1e-5)
    # One member: pooling is that member's Grams, so an identical image has zero style loss.
    one = member_codes[:1]
    with torch.no_grad():
        _, _, style = alignment_loss(tiny_generator.synthesis(one), group_targets(tiny_generator, one, [1.0], pooled), pooled)
    assert float(style) == pytest.approx(0.0, abs=1e-3)
    result = align_group(tiny_generator, member_codes, weights, pooled)
    assert len(result.losses) == 5 and result.losses[-1] < result.losses[0]


def test_site_style_needs_well_shaped_site_grams(tiny_generator: nn.Module, lite0: nn.Module,
                                                 member_codes: torch.Tensor) -> None:
    site = AlignmentFeatures(lite0, AlignmentSettings(steps=1, style_target="site"))
    with pytest.raises(BadInputError, match="site_grams"):
        align_group(tiny_generator, member_codes, [0.2] * 5, site)
    grams = site_style_grams(tiny_generator, member_codes, [0.2] * 5, site)
    with pytest.raises(BadInputError, match="site_grams: expected"):
        align_group(tiny_generator, member_codes, [0.2] * 5, site, site_grams=grams[:, :4])
    with pytest.raises(BadInputError, match="not 'site'"):
        group_targets(tiny_generator, member_codes, [0.2] * 5, AlignmentFeatures(lite0, AlignmentSettings()), site_grams=grams)
    with pytest.raises(BadInputError, match="site codes"):
        site_style_grams(tiny_generator, member_codes, [0.5, 0.5], site)


def test_site_target_is_the_pooled_target_when_the_release_is_one_group(tiny_generator: nn.Module, lite0: nn.Module,
                                                                        member_codes: torch.Tensor) -> None:
    weights = [0.1, 0.2, 0.3, 0.2, 0.2]
    pooled = AlignmentFeatures(lite0, AlignmentSettings(steps=4, style_target="pooled"))
    site = AlignmentFeatures(lite0, AlignmentSettings(steps=4, style_target="site"))
    grams = site_style_grams(tiny_generator, member_codes, weights, site)
    # Batching (and unnormalised weights) does not change the target.
    tol = 1e-5 * float(grams.abs().max())  # batched convolutions round differently
    assert torch.allclose(site_style_grams(tiny_generator, member_codes, [2 * x for x in weights], site, batch=2), grams,
                          rtol=1e-4, atol=tol)
    t_pooled = group_targets(tiny_generator, member_codes, weights, pooled)
    t_site = group_targets(tiny_generator, member_codes, weights, site, site_grams=grams)
    assert t_site.grams.shape == t_pooled.grams.shape and t_site.patch_keys is None
    assert torch.allclose(t_site.grams, t_pooled.grams, rtol=1e-4, atol=tol)
    a = align_group(tiny_generator, member_codes, weights, pooled)
    b = align_group(tiny_generator, member_codes, weights, site, site_grams=grams)
    assert torch.allclose(a.ws, b.ws, atol=1e-5)


def test_content_start_style_site_uses_the_members_only_through_their_mean(tiny_generator: nn.Module, lite0: nn.Module,
                                                                           member_codes: torch.Tensor) -> None:
    """Two groups with the same mean code get the same output; with pooled style they do not."""
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(member_codes.shape, generator=g)
    other = member_codes + 0.5 * (noise - noise.mean(dim=0, keepdim=True))  # other members, same mean code
    assert torch.allclose(other.mean(0), member_codes.mean(0), atol=1e-5)
    assert (other - member_codes).abs().max() > 0.3
    anchor = torch.zeros(1, *member_codes.shape[1:])
    settings = AlignmentSettings(steps=5, shrink=0.8, content_target="start", style_target="site")
    counting = CountingExtractor(lite0)
    site = AlignmentFeatures(counting, settings)
    grams = site_style_grams(tiny_generator, torch.cat([member_codes, other]), [0.1] * 10, site)
    counting.batches.clear()
    a = align_group(tiny_generator, member_codes, [0.2] * 5, site, anchor=anchor, site_grams=grams)
    assert counting.batches == [1] * 6  # the start image, then one call per step: the members are never reconstructed
    b = align_group(tiny_generator, other, [0.2] * 5, site, anchor=anchor, site_grams=grams)
    assert torch.allclose(a.ws, b.ws, atol=1e-5) and torch.allclose(a.image, b.image, atol=1e-5)
    pooled = AlignmentFeatures(lite0, dataclasses.replace(settings, style_target="pooled"))
    c = align_group(tiny_generator, member_codes, [0.2] * 5, pooled, anchor=anchor)
    d = align_group(tiny_generator, other, [0.2] * 5, pooled, anchor=anchor)
    assert not torch.allclose(c.ws, d.ws, atol=1e-4)
