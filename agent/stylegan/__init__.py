"""StyleGAN2 at the site, in plain PyTorch: model blocks, augmentation, local and DP training.

Public entry points: :class:`Generator`, :class:`Discriminator`, :class:`StyleGANTrainer`,
:func:`preset`, :class:`TrainingMode`. Heavy modules import torch; import this package lazily
from CLI handlers.
"""

from agent.stylegan.config import StyleGANConfig, TrainingConfig, TrainingMode, preset
from agent.stylegan.discriminator import Discriminator
from agent.stylegan.generator import Generator
from agent.stylegan.train import StyleGANTrainer

__all__ = ["Discriminator", "Generator", "StyleGANConfig", "StyleGANTrainer", "TrainingConfig", "TrainingMode", "preset"]
