"""StyleGAN2 residual discriminator.

No normalisation layers, so every sample's logit depends only on that sample, which DP-SGD's
per-sample gradients need. The one exception is minibatch standard deviation, which mixes samples
of a group: it must be switched off (``mbstd_group_size=0``) for ``federated-dp`` training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agent.stylegan.config import StyleGANConfig
from agent.stylegan.layers import EqualConv2d, EqualLinear


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs and a x2 downsample, plus a 1x1 residual path; sum scaled by 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3, activate=True)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3, activate=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Average pooling stands in for NVlabs' FIR-filtered downsampling.
        y = F.avg_pool2d(self.conv2(self.conv1(x)), 2)
        skip = self.skip(F.avg_pool2d(x, 2))
        return (y + skip) / math.sqrt(2.0)


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one channel holding the average feature stddev over groups of samples."""
    b, c, h, w = x.shape
    g = min(group_size, b)
    if b % g:
        raise ValueError(f"minibatch stddev: batch {b} must be divisible by group size {g}")
    y = x.reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Image (B, C, R, R) in [-1, 1] -> one real/fake logit per image, shape (B,)."""

    def __init__(self, cfg: StyleGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        r = cfg.resolution
        self.from_rgb = EqualConv2d(cfg.image_channels, cfg.channels(r), 1, activate=True)
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(cfg.channels(2**k), cfg.channels(2 ** (k - 1)))
              for k in range(cfg.log2_resolution, 2, -1))
        )
        c4 = cfg.channels(4)
        self.mbstd_group_size = cfg.mbstd_group_size
        self.final_conv = EqualConv2d(c4 + (1 if cfg.mbstd_group_size else 0), c4, 3, activate=True)
        self.final_linear = EqualLinear(c4 * 16, c4, activate=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        expected = (self.cfg.image_channels, self.cfg.resolution, self.cfg.resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"discriminator: expected images (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(img.shape)}")
        x = self.blocks(self.from_rgb(img))
        if self.mbstd_group_size:
            x = minibatch_stddev(x, self.mbstd_group_size)
        x = self.final_conv(x)
        return self.out(self.final_linear(x.flatten(1))).squeeze(1)
