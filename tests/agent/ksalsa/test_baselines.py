"""Baselines: one output per group, right shapes, patient-equal weighting, k-Same-Pixel = pixel mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.ksalsa.baselines import (
    centroid_latents,
    k_same_eigen,
    k_same_pixel,
    patient_weights,
    to_tensor,
    to_uint8,
)
from agent.ksalsa.clustering import cluster_by_patient
from protocols.errors import BadInputError


def _site(n_patients: int = 7, repeat: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(0)
    keys = [f"p{i}" for i in range(n_patients)] + [f"p{i}" for i in repeat]
    return torch.rand((len(keys), 3, 16, 16), generator=g) * 2 - 1, keys


def test_k_same_pixel_is_the_pixel_mean() -> None:
    images, keys = _site(7)
    clustering = cluster_by_patient(images.flatten(1).numpy(), keys, k=3)
    out = k_same_pixel(images, clustering, keys)
    assert out.shape == (len(clustering.groups), 3, 16, 16)
    for gi, g in enumerate(clustering.groups):
        torch.testing.assert_close(out[gi], images[list(g.indices)].mean(dim=0))


def test_a_patient_with_several_images_counts_once() -> None:
    images, keys = _site(3, repeat=(0, 0, 0))  # p0 has four images
    clustering = cluster_by_patient(images.flatten(1).numpy(), keys, k=3)
    out = k_same_pixel(images, clustering, keys)[0]
    p0 = images[[0, 3, 4, 5]].mean(dim=0)
    torch.testing.assert_close(out, (p0 + images[1] + images[2]) / 3)
    np.testing.assert_allclose(patient_weights(["a", "a", "b"]), [0.25, 0.25, 0.5])


def test_k_same_eigen_with_a_full_basis_equals_the_pixel_mean() -> None:
    images, keys = _site(8)
    clustering = cluster_by_patient(images.flatten(1).numpy(), keys, k=3)
    full = k_same_eigen(images, clustering, keys, components=len(keys) - 1)
    torch.testing.assert_close(full, k_same_pixel(images, clustering, keys), atol=1e-5, rtol=0)
    few = k_same_eigen(images, clustering, keys, components=2)
    assert few.shape == full.shape
    assert not torch.allclose(few, full, atol=1e-3)  # a truncated basis loses detail


def test_k_same_eigen_refuses_too_many_components() -> None:
    images, keys = _site(4)
    clustering = cluster_by_patient(images.flatten(1).numpy(), keys, k=2)
    with pytest.raises(BadInputError, match="components: expected 1..3"):
        k_same_eigen(images, clustering, keys, components=4)


def test_centroid_latents_shape_and_value() -> None:
    g = torch.Generator().manual_seed(1)
    ws = torch.randn((9, 6, 8), generator=g)
    keys = [f"p{i}" for i in range(9)]
    clustering = cluster_by_patient(ws.flatten(1).numpy(), keys, k=4)
    out = centroid_latents(ws, clustering, keys)
    assert out.shape == (2, 6, 8)
    torch.testing.assert_close(out[1], ws[list(clustering.groups[1].indices)].mean(dim=0))
    with pytest.raises(BadInputError, match="expected 9 rows"):
        centroid_latents(ws[:5], clustering, keys)


def test_uint8_round_trip() -> None:
    rgb = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(2)]
    np.testing.assert_array_equal(to_uint8(to_tensor(rgb)), np.stack(rgb))


def test_k_same_eigen_keeps_the_leading_components_by_default() -> None:
    """Images on a 2-D affine subspace plus tiny noise: 90 % of the variance needs 2 components, and
    the default basis reproduces the pixel mean up to the noise."""
    g = torch.Generator().manual_seed(2)
    basis = torch.randn((2, 3 * 8 * 8), generator=g)
    coeffs = torch.randn((10, 2), generator=g)
    images = (0.1 * (coeffs @ basis) + 1e-4 * torch.randn((10, 3 * 8 * 8), generator=g)).reshape(10, 3, 8, 8)
    keys = [f"p{i}" for i in range(10)]
    clustering = cluster_by_patient(images.flatten(1).numpy(), keys, k=3)
    out = k_same_eigen(images, clustering, keys)
    torch.testing.assert_close(out, k_same_pixel(images, clustering, keys), atol=1e-3, rtol=0)
    with pytest.raises(BadInputError, match="variance: expected a fraction"):
        k_same_eigen(images, clustering, keys, variance=1.5)
