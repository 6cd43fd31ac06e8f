"""ReStyle-style encoder: predicts a W+ *correction* from (target image, current reconstruction).

Inversion starts at the generator's average latent and refines it: ``ws <- ws + E([x, G(ws)])``
for a few iterations (Alaluf et al. 2021, "ReStyle"), with a pSp-like feature pyramid where coarse
styles come from the deepest (4x4) features, middle styles from 8x8 and fine styles from 16x16
(Richardson et al. 2021, "pSp"). Small and BatchNorm-free, so it trains at the site on CPU.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from protocols.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Encoder architecture; must match the generator it inverts (resolution, num_ws, w_dim)."""

    resolution: int  # input edge in pixels (the generator's resolution)
    num_ws: int  # W+ layers of the generator
    w_dim: int  # style vector size of the generator
    width: int = 64  # channels of the pyramid features
    coarse_ws: int = 3  # W+ layers predicted from 4x4 features (pose, shape)
    middle_ws: int = 4  # W+ layers predicted from 8x8 features; the rest come from 16x16 (texture, colour)

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.resolution & (self.resolution - 1):
            raise ConfigError(f"encoder.resolution: expected a power of two >= 16, got {self.resolution}")
        if self.num_ws <= 0:
            raise ConfigError(f"encoder.num_ws: expected >= 1, got {self.num_ws}")

    def group_sizes(self) -> tuple[int, int, int]:
        """(coarse, middle, fine) counts; clipped so a short W+ still adds up."""
        coarse = min(self.coarse_ws, self.num_ws)
        middle = min(self.middle_ws, self.num_ws - coarse)
        return coarse, middle, self.num_ws - coarse - middle


class _ResidualDown(nn.Module):
    """Two 3x3 convs with leaky ReLU, halving the resolution, plus a pooled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(y, 0.2) + self.skip(F.avg_pool2d(x, 2))


class _StyleHead(nn.Module):
    """Feature map (B, C, s, s) -> (B, n, w_dim) via strided convs down to 1x1 (pSp map2style)."""

    def __init__(self, width: int, size: int, n: int, w_dim: int) -> None:
        super().__init__()
        steps = int(math.log2(size))
        self.convs = nn.Sequential(*(m for _ in range(steps) for m in
                                     (nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2))))
        self.linear = nn.Linear(width, n * w_dim)
        # Start with small corrections: the first refinement stays near the average latent.
        nn.init.normal_(self.linear.weight, std=0.01 / math.sqrt(width))
        nn.init.zeros_(self.linear.bias)
        self.n, self.w_dim = n, w_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1)).view(-1, self.n, self.w_dim)


class ReStyleEncoder(nn.Module):
    """(target, current reconstruction), both (B, 3, R, R) in [-1, 1] -> W+ delta (B, num_ws, w_dim)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Conv2d(6, w, 3, padding=1)
        self.downs = nn.ModuleList(_ResidualDown(w, w) for _ in range(int(math.log2(cfg.resolution)) - 2))
        self.lateral = nn.ModuleList(nn.Conv2d(w, w, 1) for _ in range(2))  # FPN merges into 8x8 and 16x16
        coarse, middle, fine = cfg.group_sizes()
        half = cfg.resolution // 2  # the largest map the encoder makes (a 16 px input has no 16x16 map)
        sizes = (4, min(8, half), min(16, half))
        self.heads = nn.ModuleList(
            _StyleHead(w, size, n, cfg.w_dim) for size, n in zip(sizes, (coarse, middle, fine)) if n > 0
        )

    def forward(self, target: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        expected = (3, self.cfg.resolution, self.cfg.resolution)
        if target.shape != current.shape or tuple(target.shape[1:]) != expected:
            raise ValueError(f"encoder: expected target and current of shape (B, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {tuple(target.shape)} and {tuple(current.shape)}")
        x = F.leaky_relu(self.stem(torch.cat([target, current], dim=1)), 0.2)
        by_size = {}
        for down in self.downs:
            x = down(x)
            by_size[x.shape[-1]] = x
        # Top-down pathway: deeper (more semantic) features are upsampled into the finer maps.
        p4 = by_size[4]
        p8 = by_size[8] + F.interpolate(p4, scale_factor=2, mode="nearest") if 8 in by_size else p4
        p8 = self.lateral[0](p8)
        p16 = by_size[16] + F.interpolate(p8, scale_factor=2, mode="nearest") if 16 in by_size else p8
        p16 = self.lateral[1](p16)
        pyramid = [p for p, n in zip((p4, p8, p16), self.cfg.group_sizes()) if n > 0]
        return torch.cat([head(p) for head, p in zip(self.heads, pyramid)], dim=1)
