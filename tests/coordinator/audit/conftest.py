"""A valid ledger (2 sites, DP-SGD and k-anonymity entries) and its auditor key folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordinator.ledger.head import head_path_for
from coordinator.ledger.synthetic import synthetic_claims, write_synthetic_ledger
from protocols.signing import SigningKey, save_public_key


@pytest.fixture(scope="session")
def keyring() -> dict[str, SigningKey]:
    return {"coordinator": SigningKey.generate(), "hospital-a": SigningKey.generate(), "hospital-b": SigningKey.generate()}


@pytest.fixture(scope="session")
def pristine_ledger(tmp_path_factory, keyring) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    sites = {k: v for k, v in keyring.items() if k != "coordinator"}
    claims = synthetic_claims(sites, rounds=4, ksalsa_every=2)
    path = root / "ledger.jsonl"
    write_synthetic_ledger(path, claims, keyring["coordinator"], {k: v.public for k, v in sites.items()})
    return path


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory, keyring) -> Path:
    d = tmp_path_factory.mktemp("keys")
    for name, key in keyring.items():
        save_public_key(key.public, d / f"{name}.pub")
    return d


@pytest.fixture
def ledger(tmp_path, pristine_ledger) -> Path:
    """A fresh copy of the pristine ledger and its head, to tamper with."""
    path = tmp_path / "ledger.jsonl"
    shutil.copy(pristine_ledger, path)
    shutil.copy(head_path_for(pristine_ledger), head_path_for(path))
    return path
