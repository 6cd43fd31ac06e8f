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


def make_site(tmp_path, **privacy):  # noqa: ANN001, ANN201 - test helper
    """A site config on ``tmp_path`` accepting ksalsa, min_k 3 unless overridden."""
    from agent.config import parse_site_config

    (tmp_path / "data").mkdir(exist_ok=True)
    raw = {
        "site_id": "hospital-k",
        "sources": [{"path": "data"}],
        "state_dir": "state",
        "privacy": {"max_epsilon": 4.0, "delta": 1e-5, "min_k": 3, "min_patients": 3,
                    "accepted_tasks": ["ksalsa"], **privacy},
    }
    return parse_site_config(raw, base_dir=tmp_path)


@pytest.fixture()
def site(tmp_path):  # noqa: ANN001, ANN201
    return make_site(tmp_path)


@pytest.fixture()
def site_factory(tmp_path):  # noqa: ANN001, ANN201
    """``site_factory(**privacy)``: a site on this test's folder with privacy overrides."""
    return lambda **privacy: make_site(tmp_path, **privacy)


@pytest.fixture()
def site_with_key(site):  # noqa: ANN001, ANN201
    """The site plus its Ed25519 signing key in state/keys (mode 0600)."""
    from agent.ledger import site_key_path
    from protocols.signing import SigningKey, save_private_key

    key = SigningKey.generate()
    save_private_key(key, site_key_path(site.state.keys, site.site_id))
    return site, key
