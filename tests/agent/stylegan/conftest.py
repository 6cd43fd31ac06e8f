"""Small StyleGAN configurations so that tests run in seconds on one CPU core."""

from __future__ import annotations

import pytest
import torch

from agent.stylegan.config import StyleGANConfig, TrainingConfig


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_arch() -> StyleGANConfig:
    """16 px, a few thousand parameters, no minibatch stddev (usable in both modes)."""
    return StyleGANConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16,
                          mbstd_group_size=0)


@pytest.fixture
def tiny_train() -> TrainingConfig:
    return TrainingConfig(batch_size=4, r1_interval=2, augment_p=0.3, augment_interval=1, augment_speed_images=100.0)


@pytest.fixture
def real_images() -> tuple[torch.Tensor, torch.Tensor]:
    """12 smooth synthetic 16 px images of 6 patients (2 each), in [-1, 1]."""
    g = torch.Generator().manual_seed(123)
    coarse = torch.rand(12, 3, 4, 4, generator=g) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    return images, torch.arange(12) // 2
