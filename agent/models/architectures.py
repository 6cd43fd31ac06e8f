"""The GAN families of the seed papers and the shape rules shared by generators and critics.

Kossen et al. (Comput. Biol. Med. 2021) compared DCGAN, WGAN-GP and WGAN-GP with spectral
normalisation (SN) for joint image + vessel-label patches; the DP paper (Front. AI 2022) trained
the WGAN-GP critic with DP-SGD. All three generate two channels: channel 0 is the image, channel 1
the vessel label (thresholded after sampling).
"""

from __future__ import annotations

import dataclasses
import enum

from protocols.errors import BadInputError

PATCH_CHANNELS = 2  # image + vessel label, generated jointly
SUPPORTED_PATCH_SIZES = (32, 64, 96)


class Architecture(str, enum.Enum):
    """A GAN family; the value is the name used in configs, messages and file names."""

    DCGAN = "dcgan"
    WGAN_GP = "wgan-gp"
    WGAN_GP_SN = "wgan-gp-sn"

    @property
    def uses_gradient_penalty(self) -> bool:
        return self is not Architecture.DCGAN

    @property
    def critic_spectral_norm(self) -> bool:
        return self is Architecture.WGAN_GP_SN


def parse_architecture(name: str | Architecture) -> Architecture:
    """Turn a config string into an :class:`Architecture`.

    Raises
    ------
    BadInputError
        If the name is not one of the supported families.
    """
    try:
        return Architecture(name)
    except ValueError as exc:
        raise BadInputError(
            f"architecture: expected one of {[a.value for a in Architecture]}, got {name!r}"
        ) from exc


@dataclasses.dataclass(frozen=True)
class GanSpec:
    """Everything needed to rebuild a generator/critic pair (no weights)."""

    architecture: Architecture
    patch_size: int
    latent_dim: int = 128  # length of the generator's Gaussian input
    width: int = 64  # channels of the critic's first conv; the generator mirrors it
    generator_spectral_norm: bool = False  # optional SN in the generator (the critic's is fixed by the family)
    # Critic width if it should differ from the generator's (None: ``width`` for both). Under DP the
    # noise norm on the averaged critic gradient grows with sqrt(#critic parameters), so a narrower
    # critic than generator is a way to spend the same epsilon on less total noise.
    critic_width: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "architecture", parse_architecture(self.architecture))
        check_patch_size(self.patch_size)
        if self.latent_dim < 1 or self.width < 2:
            raise BadInputError(f"latent_dim and width must be positive, got {self.latent_dim}, {self.width}")
        if self.critic_width is not None and (isinstance(self.critic_width, bool) or not isinstance(self.critic_width, int)
                                              or self.critic_width < 2):
            raise BadInputError(f"critic_width: expected an integer >= 2 or None, got {self.critic_width!r}")

    @property
    def effective_critic_width(self) -> int:
        """Channels of the critic's first conv: ``critic_width`` if set, else ``width``."""
        return self.width if self.critic_width is None else self.critic_width


def check_patch_size(patch_size: int) -> None:
    """Raise unless the patch size is one the networks are built for.

    Raises
    ------
    BadInputError
        If ``patch_size`` is not in :data:`SUPPORTED_PATCH_SIZES`.
    """
    if patch_size not in SUPPORTED_PATCH_SIZES:
        raise BadInputError(
            f"patch_size: expected one of {SUPPORTED_PATCH_SIZES} (32/64 on CPU, 96 as in the papers), got {patch_size}"
        )


def resolution_plan(patch_size: int) -> tuple[int, int]:
    """(base edge, number of 2x steps) so that ``base * 2**steps == patch_size`` and base is 4 or 6."""
    check_patch_size(patch_size)
    steps = 0
    edge = patch_size
    while edge > 6:
        edge //= 2
        steps += 1
    return edge, steps
