"""VGG19 feature layers for sites that hold the original weights (k-SALSA's style loss uses conv1_2).

No wheel ships VGG weights, so a site passes its own file: a state dict in torchvision's layout
(``features.<i>.weight`` / ``.bias``; ``classifier.*`` keys are ignored), read with
``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from protocols.errors import BadInputError

# torchvision's VGG19 configuration "E": channels per conv, "M" = max pool.
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Indices in ``features`` after which a map is returned: relu1_2, relu2_2, relu3_4, relu4_4.
VGG19_TAPS = (3, 8, 17, 26)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG19:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
    return nn.Sequential(*layers)


class VGG19Features(nn.Module):
    """Images in [-1, 1] -> [relu1_2, relu2_2, relu3_4, relu4_4] of an ImageNet VGG19."""

    def __init__(self, weights_path: Path) -> None:
        super().__init__()
        self.features = _vgg19_features()[: VGG19_TAPS[-1] + 1]
        try:
            state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means: not a usable plain state dict
            raise BadInputError(f"cannot read VGG19 weights {Path(weights_path).name} as a plain state dict "
                                f"({type(exc).__name__}); export them with torch.save(model.state_dict())") from exc
        wanted = {k: v for k, v in state.items() if k.startswith("features.")}
        own = {f"features.{k}" for k in self.features.state_dict()}
        missing = sorted(own - set(wanted))
        if missing:
            raise BadInputError(f"VGG19 weights {Path(weights_path).name} lack {missing[0]} (and {len(missing) - 1} more): "
                                f"expected torchvision's vgg19 state dict layout")
        self.load_state_dict({k: wanted[k] for k in own})
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"features: expected RGB images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        x = ((images + 1.0) / 2.0 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG19_TAPS:
                out.append(x)
        return out
