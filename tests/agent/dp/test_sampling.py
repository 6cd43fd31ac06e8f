"""Poisson sampling of patients: whole (capped) patients, consistent unit indices, rate q."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.dp.sampling import UnitSampler
from protocols.errors import BadInputError
from protocols.tasks import PrivacyUnit

PATIENT_INDEX = np.repeat(np.arange(20), [3, 12] * 10)  # patients alternate 3 and 12 patches


def _sampler(unit: PrivacyUnit, q: float = 0.25, cap: int = 5, seed: int = 0) -> UnitSampler:
    return UnitSampler(PATIENT_INDEX, unit=unit, sample_rate=q, patches_per_patient=cap, generator=torch.Generator().manual_seed(seed))


def test_patient_batches_hold_whole_capped_patients_with_consistent_units() -> None:
    s = _sampler(PrivacyUnit.PATIENT)
    for _ in range(50):
        batch = s.draw()
        assert batch.sample_index.shape == batch.unit_index.shape
        patients = PATIENT_INDEX[batch.sample_index.numpy()]
        for u in range(batch.num_units):
            members = patients[batch.unit_index.numpy() == u]
            assert len(set(members.tolist())) == 1  # a unit is exactly one patient
            total = int((PATIENT_INDEX == members[0]).sum())
            assert len(members) == min(total, 5)  # all of it, or the cap
        assert len(set(patients.tolist())) == batch.num_units  # no patient split across units


def test_inclusion_rate_matches_q() -> None:
    s = _sampler(PrivacyUnit.PATIENT, q=0.3)
    counts = [s.draw().num_units for _ in range(400)]
    mean = float(np.mean(counts))
    se = np.sqrt(20 * 0.3 * 0.7 / 400)
    assert abs(mean - 6.0) < 5 * se


def test_image_unit_samples_patches_one_unit_each() -> None:
    s = _sampler(PrivacyUnit.IMAGE, q=0.1)
    batch = s.draw()
    assert s.num_units == len(PATIENT_INDEX)
    assert torch.equal(batch.unit_index, torch.arange(batch.num_units))


def test_invalid_sample_rate_is_refused() -> None:
    with pytest.raises(BadInputError, match="sample_rate"):
        _sampler(PrivacyUnit.PATIENT, q=0.0)
