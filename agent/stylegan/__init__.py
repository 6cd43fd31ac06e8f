"""StyleGAN2 at the site, in plain PyTorch: model blocks, augmentation, local and DP training.

Public entry points: :class:`Generator`, :class:`Discriminator`, :class:`StyleGANTrainer`,
:func:`preset`, :class:`TrainingMode`. ``StyleGANTrainer`` is imported on first use, because it
pulls in the DP stack (Opacus); loading a generator for sampling or inversion does not need it.
"""

from typing import Any

from agent.stylegan.config import StyleGANConfig, TrainingConfig, TrainingMode, preset
from agent.stylegan.discriminator import Discriminator
from agent.stylegan.generator import Generator

__all__ = ["Discriminator", "Generator", "StyleGANConfig", "StyleGANTrainer", "TrainingConfig", "TrainingMode", "preset"]


def __getattr__(name: str) -> Any:
    if name == "StyleGANTrainer":
        from agent.stylegan.train import StyleGANTrainer

        return StyleGANTrainer
    raise AttributeError(f"module 'agent.stylegan' has no attribute {name!r}")
