"""Fixtures for k-SALSA tests: a tiny random StyleGAN generator and the bundled feature network."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_generator() -> "torch.nn.Module":
    """An untrained 32 px generator (67k parameters); weights seeded privately."""
    from agent.stylegan.config import StyleGANConfig
    from agent.stylegan.generator import Generator

    cfg = StyleGANConfig(resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return Generator(cfg).eval()


@pytest.fixture(scope="module")
def lite0() -> "torch.nn.Module":
    from agent.features import load_feature_extractor

    return load_feature_extractor()


@pytest.fixture()
def member_codes(tiny_generator: "torch.nn.Module") -> "torch.Tensor":
    """W+ codes of five members: mapped random z with per-layer jitter."""
    g = torch.Generator().manual_seed(5)
    G = tiny_generator
    with torch.no_grad():
        w = G.mapping(G.sample_z(5, generator=g))
    ws = G.broadcast(w).clone()
    return ws + 0.3 * torch.randn(ws.shape, generator=g)
