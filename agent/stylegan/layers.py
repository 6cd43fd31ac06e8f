"""Building blocks of StyleGAN2: equalised layers, modulated convolution, noise injection.

Plain PyTorch, no custom CUDA kernels. Two simplifications versus NVlabs' code, both documented
where they apply: resampling is bilinear (``F.interpolate``) / average pooling instead of the
[1, 3, 3, 1] FIR filter with transposed convolutions, and activations use a fixed sqrt(2) gain
instead of the fused bias-act kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACT_GAIN = math.sqrt(2.0)  # keeps activation variance ~1 after leaky ReLU (He init for slope 0.2)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with the StyleGAN variance-preserving gain."""
    return F.leaky_relu(x, 0.2) * ACT_GAIN


class EqualLinear(nn.Module):
    """Fully connected layer with the equalised learning rate of ProGAN/StyleGAN.

    Weights are stored as N(0, 1) / lr_mul and scaled by lr_mul / sqrt(in_features) at run time, so
    Adam's step size is the same for every layer regardless of fan-in.
    """

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return lrelu(out) if self.activate else out


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate ("same" padding, stride 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
        return lrelu(out) if self.activate else out


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool,
                     eps: float = 1e-8) -> torch.Tensor:
    """Per-sample modulated (and optionally demodulated) convolution (StyleGAN2 eqs. 1-3).

    Mathematically each sample i is convolved with its own kernel ``w_i = w * s_i`` (scaled per
    input channel) divided per output channel by ``sqrt(sum w_i^2 + eps)``. Computed without
    building per-sample kernels (NVlabs' non-fused path): scale the input channels by ``s_i``, run
    one ordinary batched convolution with the shared kernel, then scale each output channel by the
    demodulation coefficient ``rsqrt(sum_{c,k} w[o,c,k]^2 s_i[c]^2 + eps)``. On CPU this is several
    times faster than the grouped convolution.

    Parameters
    ----------
    x : (B, C_in, H, W) input features.
    weight : (C_out, C_in, k, k) shared kernel (already scaled).
    styles : (B, C_in) per-sample scales of the input channels.
    demodulate : normalise each sample's output channels to unit expected variance (StyleGAN2 eq. 3).

    Raises
    ------
    ValueError
        If the shapes do not agree.
    """
    b, c_in = x.shape[:2]
    c_out, c_in_w, k, _ = weight.shape
    if x.ndim != 4 or c_in_w != c_in or styles.shape != (b, c_in):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"styles {tuple(styles.shape)} do not agree (need styles (B, C_in))")
    out = F.conv2d(x * styles.view(b, c_in, 1, 1), weight, padding=k // 2)
    if demodulate:
        # sum_{c,k} (w[o,c,k] s[c])^2 = (s^2) @ (sum_k w^2)^T: a (B, C_in) x (C_in, C_out) product.
        coeff = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps)
        out = out * coeff.view(b, c_out, 1, 1)
    return out


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution: an affine map of w scales the input channels per sample."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, w_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        # Bias 1 so that styles start at 1: the network starts as an ordinary convolution.
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample  # x2 bilinear before the conv (NVlabs: transposed conv + FIR blur)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return modulated_conv2d(x, self.weight * self.scale, self.affine(w), demodulate=self.demodulate)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned per-layer strength (starts at 0).

    ``noise_mode`` is ``"random"`` (fresh noise drawn from the caller's ``torch.Generator``),
    ``"const"`` (a fixed buffer, for inversion and reproducible previews) or ``"none"``.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("const_noise", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, *, noise_mode: str, generator: torch.Generator | None) -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            return x + self.strength * self.const_noise
        if noise_mode != "random" or generator is None:
            raise ValueError(f"noise_mode {noise_mode!r}: use 'const', 'none', or 'random' with a torch.Generator")
        b, _, h, w = x.shape
        noise = torch.randn(b, 1, h, w, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.strength * noise


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias -> leaky ReLU: one synthesis layer."""

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int,
                 upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim=w_dim, upsample=upsample)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, noise_mode: str,
                generator: torch.Generator | None) -> torch.Tensor:
        x = self.noise(self.conv(x, w), noise_mode=noise_mode, generator=generator)
        return lrelu(x + self.bias)


class ToRGB(nn.Module):
    """1x1 modulated conv to image channels, without demodulation (as in StyleGAN2)."""

    def __init__(self, in_channels: int, *, w_dim: int, image_channels: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, image_channels, 1, w_dim=w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, image_channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        rgb = self.conv(x, w) + self.bias
        if skip is not None:
            rgb = rgb + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return rgb
