"""Fixtures for the site-service and guard tests: a site on a temporary folder and the fake engine
from site_service/fakes.py. Folders with their own ``site``/``make_site`` fixtures override these."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_fakes():
    """Import tests/agent/site_service/fakes.py by path (tests have no packages)."""
    path = Path(__file__).resolve().parent / "site_service" / "fakes.py"
    spec = importlib.util.spec_from_file_location("anonfed_test_fakes", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


fakes = load_fakes()


@pytest.fixture(name="make_site")
def make_site_fixture():
    return fakes.make_site


@pytest.fixture
def engine_factory():
    return fakes.FakeEngine


@pytest.fixture
def site(tmp_path: Path):
    return fakes.make_site(tmp_path)


@pytest.fixture
def engine():
    return fakes.FakeEngine()
