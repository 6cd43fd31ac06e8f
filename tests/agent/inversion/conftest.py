"""A tiny frozen generator with a settled average latent, for fast inversion tests."""

from __future__ import annotations

import pytest
import torch

from agent.stylegan.config import StyleGANConfig
from agent.stylegan.generator import Generator


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_generator() -> Generator:
    arch = StyleGANConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16,
                          mbstd_group_size=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        G = Generator(arch)
    G.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.randn(4096, arch.z_dim, generator=torch.Generator().manual_seed(1))
        G.mapping.w_avg.copy_(G.mapping(z).mean(dim=0))
    return G
