"""Keys and claims for ledger tests (synthetic DP-SGD claims, epsilon from dp-accounting RDP)."""

from __future__ import annotations

import pytest

from coordinator.ledger.synthetic import synthetic_claims
from protocols.signing import SigningKey


@pytest.fixture(scope="session")
def coordinator_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="session")
def site_keys() -> dict[str, SigningKey]:
    return {"hospital-a": SigningKey.generate(), "hospital-b": SigningKey.generate()}


@pytest.fixture(scope="session")
def claims(site_keys):
    """3 rounds x 2 sites of DP-SGD claims plus one k-anonymity release per site."""
    return synthetic_claims(site_keys, rounds=3, ksalsa_every=3)


@pytest.fixture
def site_public(site_keys):
    return {name: k.public for name, k in site_keys.items()}
