"""Group averages without style alignment: k-Same-Pixel, k-Same-Eigen and the latent centroid.

All methods share one interface: a :class:`~agent.ksalsa.clustering.Clustering` of N images plus
the per-image data (pixels or W+ codes) in, one output per group out. Images are float tensors
(N, 3, H, W) in [-1, 1].

Every average weighs *patients* equally: a patient with several images in a group shares one
patient's weight among them, so a group's output is not dominated by whoever has most images
(the published methods average images; with one image per patient both are the same).
"""

from __future__ import annotations

import enum
from typing import Sequence

import numpy as np
import torch

from agent.ksalsa.clustering import Clustering
from protocols.errors import BadInputError


class Method(str, enum.Enum):
    """How a group's synthetic image is made."""

    KSALSA = "ksalsa"  # latent centroid + local style alignment (Jeon et al. 2022)
    CENTROID = "centroid"  # latent centroid, no alignment
    K_SAME_PIXEL = "k-same-pixel"  # pixel mean of the group's images (Newton et al. 2005)
    K_SAME_EIGEN = "k-same-eigen"  # mean in a PCA ("eigenface") space, reconstructed


def patient_weights(patient_keys: Sequence[str]) -> np.ndarray:
    """Weights of a group's images that sum to one with every patient summing to ``1/#patients``."""
    keys = list(patient_keys)
    if not keys:
        raise BadInputError("a group needs at least one image")
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return np.array([1.0 / (len(counts) * counts[key]) for key in keys], dtype=np.float64)


def group_weights(clustering: Clustering, patient_keys: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
    """(image indices, patient-equal weights) of every group, in group order."""
    if len(patient_keys) != clustering.num_images:
        raise BadInputError(f"patient_keys: expected {clustering.num_images} keys, got {len(patient_keys)}")
    out = []
    for g in clustering.groups:
        idx = list(g.indices)
        out.append((idx, patient_weights([patient_keys[i] for i in idx])))
    return out


def weighted_group_means(values: torch.Tensor, clustering: Clustering, patient_keys: Sequence[str]) -> torch.Tensor:
    """Patient-weighted mean of ``values`` (N, ...) over each group -> (groups, ...)."""
    if values.shape[0] != clustering.num_images:
        raise BadInputError(f"expected {clustering.num_images} rows (one per clustered image), got {values.shape[0]}")
    means = []
    for idx, w in group_weights(clustering, patient_keys):
        wt = torch.as_tensor(w, dtype=values.dtype, device=values.device).view(-1, *([1] * (values.ndim - 1)))
        means.append((values[idx] * wt).sum(dim=0))
    return torch.stack(means)


def k_same_pixel(images: torch.Tensor, clustering: Clustering, patient_keys: Sequence[str]) -> torch.Tensor:
    """k-Same-Pixel: the (patient-weighted) pixel mean of each group, (groups, 3, H, W)."""
    _check_images(images)
    return weighted_group_means(images, clustering, patient_keys)


def k_same_eigen(images: torch.Tensor, clustering: Clustering, patient_keys: Sequence[str], *,
                 components: int | None = None, variance: float = 0.9) -> torch.Tensor:
    """k-Same-Eigen: average each group's coefficients in a PCA basis of all N images, reconstruct.

    ``components`` defaults to the fewest eigenvectors that explain ``variance`` of the images'
    variance (eigenfaces keep the leading components); with ``N - 1`` components the basis spans
    every image and the result equals k-Same-Pixel (a test checks this).

    Raises
    ------
    BadInputError
        If ``components`` is not in ``1 .. N-1`` or the images are malformed.
    """
    _check_images(images)
    n = images.shape[0]
    if components is not None and not 1 <= components <= max(n - 1, 1):
        raise BadInputError(f"components: expected 1..{n - 1} for {n} images, got {components}")
    if not 0.0 < variance <= 1.0:
        raise BadInputError(f"variance: expected a fraction in (0, 1], got {variance}")
    flat = images.reshape(n, -1).to(torch.float64)
    mean = flat.mean(dim=0, keepdim=True)
    # Eigenvectors of the image covariance = right singular vectors of the centred data.
    _, sv, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    if components is None:
        explained = torch.cumsum(sv.square(), 0) / sv.square().sum().clamp_min(1e-300)
        components = int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype))) + 1
    m = max(1, min(components, n - 1))
    basis = vh[:m]  # (m, D)
    coeffs = (flat - mean) @ basis.T  # (N, m)
    group_coeffs = weighted_group_means(coeffs, clustering, patient_keys)
    recon = group_coeffs @ basis + mean
    return recon.to(images.dtype).reshape(-1, *images.shape[1:]).clamp(-1.0, 1.0)


def centroid_latents(ws: torch.Tensor, clustering: Clustering, patient_keys: Sequence[str]) -> torch.Tensor:
    """Patient-weighted mean W+ code of each group, (groups, num_ws, w_dim)."""
    if ws.ndim != 3:
        raise BadInputError(f"ws: expected W+ codes (N, num_ws, w_dim), got {tuple(ws.shape)}")
    return weighted_group_means(ws, clustering, patient_keys)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise BadInputError(f"images: expected (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")


def to_tensor(rgb: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> float (N, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(x) for x in rgb]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).numpy().astype(np.uint8)
