"""Critics (discriminators) built only from layers whose per-sample gradients are exact.

A DP critic must not mix samples: no BatchNorm (it couples the samples of a batch) and no
running statistics. The critic is a stack of 4x4 stride-2 convolutions with LeakyReLU(0.2) and a
linear head, the DCGAN/WGAN-GP discriminator of the seed papers without normalisation layers.

Spectral normalisation is implemented here rather than with ``torch.nn.utils`` so that the
power-iteration vectors are plain buffers: the per-sample gradient pass treats them as constants
(exactly what SN's gradient is defined with), and :meth:`ConvCritic.update_spectral_vectors` moves
them in a separate, data-free step. Weight divided by ``sigma = u^T W v`` is computed in
``forward`` from the raw parameter, so ``torch.func.functional_call`` sees the whole operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agent.models.architectures import PATCH_CHANNELS, resolution_plan

LEAKY_SLOPE = 0.2
_SN_EPS = 1e-12


class ConvCritic(nn.Module):
    """Conv critic: ``n`` blocks of conv(4, stride 2, pad 1) + LeakyReLU, then a linear head.

    Parameters
    ----------
    patch_size:
        Edge of the square input patches (32, 64 or 96).
    width:
        Channels of the first conv; each further block doubles them (capped at 8x width).
    spectral_norm:
        Divide every weight (convs and head) by its largest singular value, estimated by power
        iteration with buffers ``u{i}``/``v{i}``.
    """

    def __init__(self, *, patch_size: int, width: int = 64, spectral_norm: bool = False) -> None:
        super().__init__()
        base, steps = resolution_plan(patch_size)
        self.patch_size = patch_size
        self.spectral_norm = spectral_norm
        channels = [PATCH_CHANNELS] + [width * min(2**i, 8) for i in range(steps)]
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 4, 2, 1) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.head = nn.Linear(channels[-1] * base * base, 1)
        if spectral_norm:
            gen = torch.Generator().manual_seed(0)  # u/v start: any non-degenerate vector works
            for i, layer in enumerate(self.weighted_layers()):
                rows = layer.weight.shape[0]
                cols = layer.weight[0].numel()
                self.register_buffer(f"sn_u{i}", F.normalize(torch.randn(rows, generator=gen), dim=0, eps=_SN_EPS))
                self.register_buffer(f"sn_v{i}", F.normalize(torch.randn(cols, generator=gen), dim=0, eps=_SN_EPS))
            self.update_spectral_vectors(iterations=5)

    def weighted_layers(self) -> list[nn.Module]:
        """Convs in order, then the head (the order of the SN buffers)."""
        return [*self.convs, self.head]

    def effective_weight(self, index: int) -> torch.Tensor:
        """Layer ``index``'s weight as used in forward (divided by sigma when SN is on)."""
        weight = self.weighted_layers()[index].weight
        if not self.spectral_norm:
            return weight
        u = getattr(self, f"sn_u{index}")
        v = getattr(self, f"sn_v{index}")
        sigma = torch.dot(u, weight.reshape(weight.shape[0], -1) @ v)
        return weight / sigma

    @torch.no_grad()
    def update_spectral_vectors(self, iterations: int = 1) -> None:
        """Power iteration on the current weights; uses no data, so it costs no privacy."""
        if not self.spectral_norm:
            return
        for i, layer in enumerate(self.weighted_layers()):
            w = layer.weight.reshape(layer.weight.shape[0], -1)
            u = getattr(self, f"sn_u{i}")
            v = getattr(self, f"sn_v{i}")
            for _ in range(iterations):
                v = F.normalize(w.t() @ u, dim=0, eps=_SN_EPS)
                u = F.normalize(w @ v, dim=0, eps=_SN_EPS)
            getattr(self, f"sn_u{i}").copy_(u)
            getattr(self, f"sn_v{i}").copy_(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Critic score per patch, shape ``(N,)``."""
        if x.dim() != 4 or x.shape[1] != PATCH_CHANNELS or x.shape[-1] != self.patch_size:
            raise ValueError(f"critic expects (N, {PATCH_CHANNELS}, {self.patch_size}, {self.patch_size}), got {tuple(x.shape)}")
        h = x
        for i, conv in enumerate(self.convs):
            h = F.leaky_relu(F.conv2d(h, self.effective_weight(i), conv.bias, stride=2, padding=1), LEAKY_SLOPE)
        return F.linear(h.flatten(1), self.effective_weight(len(self.convs)), self.head.bias).squeeze(-1)
