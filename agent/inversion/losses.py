"""Reconstruction loss for inversion: pixels plus a perceptual term on a frozen feature network."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from agent.features.loader import FeatureExtractor, feature_distance


@dataclasses.dataclass(frozen=True)
class ReconstructionWeights:
    """Weights of the reconstruction loss terms (pSp uses L2 1.0, LPIPS 0.8, latent regularisers)."""

    pixel: float = 1.0  # mean squared error in [-1, 1] pixel units
    feature: float = 0.8  # perceptual distance on the feature network (0 disables it)
    latent: float = 1.0  # squared error to the true W+ when the target is a generator sample
    feature_resolution: int | None = 128  # resize before the feature network (ImageNet nets want >= 64 px)


class ReconstructionLoss(torch.nn.Module):
    """Per-sample loss between reconstructions and targets, shape (B,)."""

    def __init__(self, features: FeatureExtractor | None, weights: ReconstructionWeights) -> None:
        super().__init__()
        if weights.feature and features is None:
            raise ValueError("a feature weight > 0 needs a feature network (see agent.features)")
        self.features = features
        self.weights = weights

    def forward(self, recon: torch.Tensor, target: torch.Tensor, *, ws: torch.Tensor | None = None,
                true_ws: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weights
        loss = w.pixel * (recon - target).square().flatten(1).mean(dim=1)
        if w.feature and self.features is not None:
            a, b = recon, target
            if w.feature_resolution and a.shape[-1] != w.feature_resolution:
                size = (w.feature_resolution, w.feature_resolution)
                a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
                b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
            loss = loss + w.feature * feature_distance(self.features, a, b)
        if w.latent and ws is not None and true_ws is not None:
            loss = loss + w.latent * (ws - true_ws).square().flatten(1).mean(dim=1)
        return loss
