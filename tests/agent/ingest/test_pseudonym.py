"""Site keys, patient pseudonyms and path encryption."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.ingest.pseudonym import PSEUDONYM_KEY_FILE, SiteSecrets
from protocols.errors import IntegrityError


def test_keys_are_created_once_with_mode_0600(tmp_path: Path) -> None:
    a = SiteSecrets(tmp_path / "keys")
    key_file = tmp_path / "keys" / PSEUDONYM_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    b = SiteSecrets(tmp_path / "keys")
    assert a.patient_key("HA-000123") == b.patient_key("HA-000123")
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []


def test_pseudonyms_differ_between_patients_domains_and_sites(tmp_path: Path) -> None:
    a, other_site = SiteSecrets(tmp_path / "a"), SiteSecrets(tmp_path / "b")
    assert a.patient_key("HA-000123") != a.patient_key("HA-000124")
    assert a.patient_key("HA-000123") != other_site.patient_key("HA-000123")
    assert a.patient_key("1.2.3") != a.uid_key("series", "1.2.3")
    assert "HA-000123" not in a.patient_key("HA-000123")


def test_a_damaged_key_file_is_refused_not_replaced(tmp_path: Path) -> None:
    SiteSecrets(tmp_path)
    (tmp_path / PSEUDONYM_KEY_FILE).write_bytes(b"short")
    with pytest.raises(IntegrityError, match="expected 32 bytes, found 5"):
        SiteSecrets(tmp_path)


def test_paths_round_trip_and_need_the_site_key(tmp_path: Path) -> None:
    a, b = SiteSecrets(tmp_path / "a"), SiteSecrets(tmp_path / "b")
    path = Path("/pacs/MRN-998877/slice 1.dcm")
    blob = a.encrypt_path(path)
    assert b"MRN-998877" not in blob and a.decrypt_path(blob) == path
    assert a.encrypt_path(path) != blob  # fresh nonce each time
    with pytest.raises(IntegrityError, match="does not decrypt"):
        b.decrypt_path(blob)
    assert os.path.exists(tmp_path / "a" / "path.key")
