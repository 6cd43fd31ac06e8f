"""StyleGAN2 generator: mapping network + skip-architecture synthesis network.

``Generator.forward(z)`` is mapping then synthesis. Randomness is always explicit: per-pixel noise
comes from the caller's ``torch.Generator`` (``noise_mode="random"``) or from fixed buffers
(``"const"``), never from the global RNG.
"""

from __future__ import annotations

import torch
from torch import nn

from agent.stylegan.config import StyleGANConfig
from agent.stylegan.layers import EqualLinear, StyledConv, ToRGB


class MappingNetwork(nn.Module):
    """z -> w: pixel-normalised z through an MLP; tracks the average w for truncation/inversion."""

    def __init__(self, cfg: StyleGANConfig) -> None:
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul, activate=True) for a, b in zip(dims[:-1], dims[1:])
        )
        self.z_dim = cfg.z_dim
        self.w_avg_beta = cfg.w_avg_beta
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor, *, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping: expected z of shape (B, {self.z_dim}), got {tuple(z.shape)}")
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # pixel norm
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.lerp_(x.detach().mean(dim=0).to(self.w_avg.dtype), 1.0 - self.w_avg_beta)
        if truncation_psi != 1.0:
            x = self.w_avg.lerp(x, truncation_psi)  # w_avg + psi * (w - w_avg)
        return x


class SynthesisNetwork(nn.Module):
    """W+ (B, num_ws, w_dim) -> image (B, C, R, R) in roughly [-1, 1], skip architecture.

    Each resolution adds an upsampled RGB image from the previous one (StyleGAN2 "skip" generator),
    starting from a learned 4x4 constant.
    """

    def __init__(self, cfg: StyleGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_ws = cfg.num_ws
        self.const = nn.Parameter(torch.randn(1, cfg.channels(4), 4, 4))
        self.conv4 = StyledConv(cfg.channels(4), cfg.channels(4), w_dim=cfg.w_dim, resolution=4)
        self.rgb4 = ToRGB(cfg.channels(4), w_dim=cfg.w_dim, image_channels=cfg.image_channels)
        self.up_convs = nn.ModuleList()  # pairs of convs per resolution 8..R (first one upsamples)
        self.rgbs = nn.ModuleList()
        for log_r in range(3, cfg.log2_resolution + 1):
            r = 2**log_r
            c_in, c_out = cfg.channels(r // 2), cfg.channels(r)
            self.up_convs.append(StyledConv(c_in, c_out, w_dim=cfg.w_dim, resolution=r, upsample=True))
            self.up_convs.append(StyledConv(c_out, c_out, w_dim=cfg.w_dim, resolution=r))
            self.rgbs.append(ToRGB(c_out, w_dim=cfg.w_dim, image_channels=cfg.image_channels))

    def forward(self, ws: torch.Tensor, *, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.cfg.w_dim):
            raise ValueError(f"synthesis: expected ws (B, {self.num_ws}, {self.cfg.w_dim}), got {tuple(ws.shape)}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.conv4(x, ws[:, 0], noise_mode=noise_mode, generator=generator)
        rgb = self.rgb4(x, ws[:, 1], None)
        # Layer i uses ws[:, i]; a toRGB uses the index of the next conv (as in StyleGAN2).
        for i, rgb_layer in enumerate(self.rgbs):
            idx = 1 + 2 * i
            x = self.up_convs[2 * i](x, ws[:, idx], noise_mode=noise_mode, generator=generator)
            x = self.up_convs[2 * i + 1](x, ws[:, idx + 1], noise_mode=noise_mode, generator=generator)
            rgb = rgb_layer(x, ws[:, idx + 2], rgb)
        return rgb


class Generator(nn.Module):
    """StyleGAN2 generator = mapping + synthesis."""

    def __init__(self, cfg: StyleGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    def forward(self, z: torch.Tensor, *, truncation_psi: float = 1.0, noise_mode: str = "const",
                generator: torch.Generator | None = None, update_w_avg: bool = False) -> torch.Tensor:
        w = self.mapping(z, truncation_psi=truncation_psi, update_w_avg=update_w_avg)
        return self.synthesis(self.broadcast(w), noise_mode=noise_mode, generator=generator)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """(B, w_dim) -> W+ (B, num_ws, w_dim) with the same w in every layer."""
        return w.unsqueeze(1).expand(-1, self.num_ws, -1)

    def mean_ws(self, batch: int = 1) -> torch.Tensor:
        """The average latent in W+, where iterative inversion starts."""
        return self.broadcast(self.mapping.w_avg.unsqueeze(0).expand(batch, -1)).clone()

    def sample_z(self, batch: int, *, generator: torch.Generator) -> torch.Tensor:
        """Standard-normal z drawn from the caller's generator."""
        device = self.mapping.w_avg.device
        return torch.randn(batch, self.cfg.z_dim, generator=generator, device=device)
