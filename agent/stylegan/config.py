"""StyleGAN2 architecture and training configurations.

Three presets: ``small64`` trains on CPU at 64 px (tests, the demo); ``cuda256`` and ``cuda512``
follow the StyleGAN2-ADA paper configurations for fundus photographs on a GPU. A config is a frozen
dataclass so it can be recorded next to a checkpoint and compared on resume.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from protocols.errors import ConfigError


class TrainingMode(str, enum.Enum):
    """How a StyleGAN is trained, and therefore whether its weights may ever leave the site."""

    LOCAL = "local"  # no DP: weights stay at the site; the egress guard refuses them
    FEDERATED_DP = "federated-dp"  # discriminator under DP-SGD on patients; weights may be aggregated


class ReleasePolicy(str, enum.Enum):
    """Marker written into every checkpoint and read by the egress guard."""

    SITE_ONLY = "site-only"  # must never be sent; no privacy guarantee covers these weights
    DP_RELEASABLE = "dp-releasable"  # trained under DP-SGD; may leave once the spend is recorded


def release_policy_for(mode: TrainingMode) -> ReleasePolicy:
    """The release policy that follows from a training mode (the only place this is decided)."""
    return ReleasePolicy.DP_RELEASABLE if mode is TrainingMode.FEDERATED_DP else ReleasePolicy.SITE_ONLY


@dataclasses.dataclass(frozen=True)
class StyleGANConfig:
    """Architecture of generator and discriminator.

    Channel counts follow StyleGAN2: ``min(channel_base // resolution, channel_max)`` at each
    resolution, so small ``channel_base`` gives a small network at every scale.
    """

    resolution: int = 64  # output edge in pixels, a power of two >= 8
    image_channels: int = 3  # RGB fundus photographs
    z_dim: int = 128  # input latent size (Gaussian)
    w_dim: int = 128  # intermediate latent size (style vectors)
    mapping_layers: int = 4  # fully connected layers in the mapping network (paper: 8)
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping network (paper: 0.01)
    channel_base: int = 4096  # channels at resolution r = min(channel_base // r, channel_max)
    channel_max: int = 128  # cap on channels per layer
    mbstd_group_size: int = 4  # minibatch-stddev group; 0 disables it (required under DP-SGD)
    w_avg_beta: float = 0.995  # decay of the tracked average w used for truncation and inversion

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 8 or r & (r - 1):
            raise ConfigError(f"stylegan.resolution: expected a power of two >= 8, got {r}")
        if self.mapping_layers < 1:
            raise ConfigError(f"stylegan.mapping_layers: expected >= 1, got {self.mapping_layers}")
        if self.mbstd_group_size < 0:
            raise ConfigError(f"stylegan.mbstd_group_size: expected >= 0, got {self.mbstd_group_size}")

    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def num_ws(self) -> int:
        """Number of style vectors in W+ (one per modulated conv, plus the last toRGB)."""
        return 2 * self.log2_resolution - 2

    def channels(self, resolution: int) -> int:
        """Feature channels used at ``resolution``."""
        return max(1, min(self.channel_base // resolution, self.channel_max))

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of the GAN training loop."""

    batch_size: int = 16  # images per step (local mode) and fakes per generator step (both modes); under DP the
    # discriminator's expected batch is set by sampling
    g_lr: float = 0.0025  # Adam learning rate of the generator (StyleGAN2: 0.0025)
    d_lr: float = 0.0025  # Adam learning rate of the discriminator
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas (StyleGAN2)
    r1_gamma: float = 1.0  # R1 weight gamma; the penalty is gamma/2 * |grad_x D(x)|^2
    r1_interval: int = 4  # lazy R1 every this many steps (local mode); 1 = every step
    ema_half_life_images: float = 2_000.0  # G_ema half-life in images (paper: 10k images)
    augment_target: float = 0.6  # ADA target for E[sign(D(real))]
    augment_speed_images: float = 10_000.0  # images for p to move by 1 (ADA: 500k)
    augment_interval: int = 4  # steps between p updates
    augment_p: float = 0.0  # initial (local) or fixed (federated-dp) augmentation probability
    mixed_precision: bool = True  # bfloat16 autocast on CUDA only; ignored on CPU
    channels_last: bool = True  # channels-last memory format on CUDA only; ignored on CPU

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"stylegan.batch_size: expected >= 1, got {self.batch_size}")
        if self.r1_interval < 1:
            raise ConfigError(f"stylegan.r1_interval: expected >= 1, got {self.r1_interval}")
        if not 0.0 <= self.augment_p < 1.0:
            raise ConfigError(f"stylegan.augment_p: expected 0 <= p < 1, got {self.augment_p}")


PRESETS: dict[str, StyleGANConfig] = {
    # CPU: 32 channels at 64 px, 64 at 32 px, 128 below; ~1.2 M parameters each for G and D.
    "small64": StyleGANConfig(channel_base=2048),
    # GPU presets after StyleGAN2-ADA (paper config for 256 px; 512 px with a wider mapping).
    "cuda256": StyleGANConfig(
        resolution=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512
    ),
    "cuda512": StyleGANConfig(
        resolution=512, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512
    ),
}


def preset(name: str) -> StyleGANConfig:
    """Look up a named architecture.

    Raises
    ------
    ConfigError
        If the name is unknown.
    """
    try:
        return PRESETS[name]
    except KeyError as exc:
        raise ConfigError(f"stylegan preset {name!r} is unknown; choose one of {sorted(PRESETS)}") from exc
