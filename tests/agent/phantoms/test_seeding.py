"""Random streams, fake identifiers and UIDs: reproducible, independent, obviously fake."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydicom.uid import UID

from agent.phantoms.seeding import Stream, fake_patient_ids, fake_patient_name, rng_for, site_id_for, site_prefix, uid_for


def test_streams_are_reproducible_and_independent() -> None:
    a = rng_for(1, Stream.TOF, 0, 2).random(4)
    assert np.array_equal(a, rng_for(1, Stream.TOF, 0, 2).random(4))
    assert not np.array_equal(a, rng_for(1, Stream.TOF, 0, 3).random(4))
    assert not np.array_equal(a, rng_for(1, Stream.FUNDUS, 0, 2).random(4))
    assert not np.array_equal(a, rng_for(2, Stream.TOF, 0, 2).random(4))
    with pytest.raises(ValueError, match="non-negative"):
        rng_for(1, Stream.TOF, -1)


def test_site_ids_and_prefixes() -> None:
    assert [site_id_for(i) for i in (0, 1, 25, 26, 27)] == ["hospital-a", "hospital-b", "hospital-z", "hospital-aa", "hospital-ab"]
    assert site_prefix("hospital-c") == "HC"


def test_fake_patient_ids_are_distinct_and_disjoint_between_kinds() -> None:
    tof = fake_patient_ids(0, 0, "hospital-a", 50, kind=Stream.TOF)
    fundus = fake_patient_ids(0, 0, "hospital-a", 50, kind=Stream.FUNDUS)
    assert len(set(tof)) == 50 and not set(tof) & set(fundus)
    assert all(re.fullmatch(r"HA-\d{6}", p) for p in tof + fundus)
    assert fake_patient_ids(0, 0, "hospital-a", 10, kind=Stream.TOF) == tof[:10]
    assert fake_patient_name(7) == "Phantom^Patient07"


def test_uids_are_valid_and_deterministic() -> None:
    uid = uid_for(3, "hospital-a", "tof", 0, 0, "study")
    assert UID(uid).is_valid and len(uid) <= 64
    assert uid == uid_for(3, "hospital-a", "tof", 0, 0, "study")
    assert uid != uid_for(4, "hospital-a", "tof", 0, 0, "study")
