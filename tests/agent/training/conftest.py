"""Small synthetic patch sets and site configs for the training tests (no phantoms needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from agent.config import FolderSource, PrivacyPolicy, SiteConfig, StatePaths
from protocols.tasks import PrivacyUnit, Task


@dataclasses.dataclass(frozen=True)
class FakePatchSet:
    """The fields of agent.patching.patches.PatchSet that training reads."""

    images: np.ndarray
    patient_index: np.ndarray
    num_patients: int


@pytest.fixture
def patchset() -> FakePatchSet:
    rng = np.random.default_rng(0)
    patients, per_patient = 8, 6
    images = rng.uniform(-1, 1, (patients * per_patient, 2, 32, 32)).astype(np.float32)
    images[:, 1] = np.where(images[:, 1] > 0.6, 1.0, -1.0)
    return FakePatchSet(images, np.repeat(np.arange(patients), per_patient), patients)


@pytest.fixture
def make_site(tmp_path: Path):
    def make(*, max_epsilon: float = 8.0, delta: float = 1e-5, unit: PrivacyUnit = PrivacyUnit.PATIENT,
             tasks=(Task.DPGAN,), min_patients: int = 3) -> SiteConfig:
        (tmp_path / "data").mkdir(exist_ok=True)
        policy = PrivacyPolicy(max_epsilon, delta, unit, 5, min_patients, frozenset(tasks))
        return SiteConfig("hospital-a", (FolderSource(tmp_path / "data"),), StatePaths(tmp_path / "state"), policy)

    return make
