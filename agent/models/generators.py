"""DCGAN-style generator producing image + vessel-label patches jointly (two channels, tanh).

The generator never touches real data (it learns only through the critic), so batch
normalisation is allowed here; it uses batch statistics only (no running buffers), which keeps the
weights a plain set of float tensors that federated averaging can treat uniformly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from agent.models.architectures import PATCH_CHANNELS, resolution_plan


def _maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return _sn(layer) if enabled else layer


class UpBlock(nn.Module):
    """Transposed conv doubling the edge, batch-stat normalisation, ReLU."""

    def __init__(self, c_in: int, c_out: int, *, spectral_norm: bool) -> None:
        super().__init__()
        self.conv = _maybe_sn(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), spectral_norm)
        self.norm = nn.BatchNorm2d(c_out, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class ConvGenerator(nn.Module):
    """Latent vector -> (N, 2, S, S) in [-1, 1]: channel 0 image, channel 1 label (pre-threshold).

    Parameters
    ----------
    patch_size:
        Output edge (32, 64 or 96).
    latent_dim:
        Length of the standard-normal input.
    width:
        Channels before the last upsampling step; earlier steps double it (capped at 8x width).
    spectral_norm:
        Optional spectral normalisation of the generator's convolutions.
    """

    def __init__(self, *, patch_size: int, latent_dim: int = 128, width: int = 64, spectral_norm: bool = False) -> None:
        super().__init__()
        base, steps = resolution_plan(patch_size)
        self.patch_size = patch_size
        self.latent_dim = latent_dim
        self.base = base
        chans = [width * min(2 ** (steps - 1 - i), 8) for i in range(steps)]  # e.g. 256, 128, 64
        self.stem = nn.Linear(latent_dim, chans[0] * base * base)
        self.stem_norm = nn.BatchNorm2d(chans[0], track_running_stats=False)
        self.ups = nn.ModuleList(UpBlock(a, b, spectral_norm=spectral_norm) for a, b in zip(chans[:-1], chans[1:]))
        self.to_patch = _maybe_sn(nn.ConvTranspose2d(chans[-1], PATCH_CHANNELS, 4, 2, 1), spectral_norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"generator expects (N, {self.latent_dim}) latents, got {tuple(z.shape)}")
        h = self.stem(z).view(z.shape[0], -1, self.base, self.base)
        h = torch.relu(self.stem_norm(h))
        for up in self.ups:
            h = up(h)
        return torch.tanh(self.to_patch(h))

    def sample_latents(self, n: int, generator: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
        """Standard-normal latents from an explicit generator (never the global RNG)."""
        return torch.randn(n, self.latent_dim, generator=generator, device=device)
