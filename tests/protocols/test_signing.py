"""Ed25519 keys: file modes, passphrases, domain separation, key folders."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from protocols.errors import BadInputError, SignatureError
from protocols.signing import (
    SigningKey, load_key_directory, load_private_key, load_public_key, save_private_key, save_public_key,
)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def test_private_key_file_is_0600_and_round_trips(tmp_path, key) -> None:
    path = tmp_path / "keys" / "hospital-a.key"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).key_id == key.key_id
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_existing_key_is_not_overwritten(tmp_path, key) -> None:
    path = tmp_path / "a.key"
    save_private_key(key, path)
    with pytest.raises(BadInputError, match="refusing to overwrite a key"):
        save_private_key(SigningKey.generate(), path)
    assert load_private_key(path).key_id == key.key_id


def test_loose_file_mode_is_refused(tmp_path, key) -> None:
    path = tmp_path / "a.key"
    save_private_key(key, path)
    os.chmod(path, 0o644)
    with pytest.raises(BadInputError, match="mode 0644; expected 0600"):
        load_private_key(path)


def test_passphrase_protected_key_loads_only_with_the_passphrase(tmp_path, key) -> None:
    path = tmp_path / "a.key"
    save_private_key(key, path, passphrase=b"correct horse battery")
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_private_key(path, passphrase=b"correct horse battery").key_id == key.key_id
    with pytest.raises(BadInputError, match="is encrypted: a passphrase is required"):
        load_private_key(path)
    with pytest.raises(BadInputError, match="wrong passphrase"):
        load_private_key(path, passphrase=b"wrong horse battery")


def test_short_passphrase_is_refused(tmp_path, key) -> None:
    with pytest.raises(BadInputError, match="at least 8 bytes"):
        save_private_key(key, tmp_path / "a.key", passphrase=b"short")


def test_signatures_are_domain_separated(key) -> None:
    sig = key.sign(domain=b"anonfed/site-claim/v1", payload=b"{}")
    key.public.verify(sig, domain=b"anonfed/site-claim/v1", payload=b"{}")
    with pytest.raises(SignatureError, match="does not verify"):
        key.public.verify(sig, domain=b"anonfed/ledger-countersign/v1", payload=b"{}")
    with pytest.raises(SignatureError, match="does not verify"):
        SigningKey.generate().public.verify(sig, domain=b"anonfed/site-claim/v1", payload=b"{}")
    with pytest.raises(SignatureError, match="not valid base64"):
        key.public.verify("%%%", domain=b"anonfed/site-claim/v1", payload=b"{}")


def test_key_folder_maps_names_to_keys(tmp_path, key) -> None:
    other = SigningKey.generate()
    save_public_key(key.public, tmp_path / "coordinator.pub")
    save_public_key(other.public, tmp_path / "hospital-a.pub")
    keys = load_key_directory(tmp_path)
    assert keys == {"coordinator": key.public, "hospital-a": other.public}
    assert load_public_key(tmp_path / "coordinator.pub").key_id == key.key_id
    (tmp_path / "broken.pub").write_text("not a key")
    with pytest.raises(BadInputError, match="is not a PEM public key"):
        load_key_directory(tmp_path)
    with pytest.raises(BadInputError, match="holds no \\*.pub files"):
        load_key_directory(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)


def test_libsodium_and_openssl_agree(key, monkeypatch) -> None:
    import protocols.signing as signing

    if signing._sodium_open is None:
        pytest.skip("PyNaCl not installed: only the OpenSSL backend exists")
    good = key.sign(domain=b"d", payload=b"payload")
    bad = key.sign(domain=b"d", payload=b"other")
    raw = bytearray(base64.b64decode(good))
    raw[10] ^= 0x01  # a flipped bit inside R; replacing the tail could reproduce S's top byte by chance
    flipped = base64.b64encode(bytes(raw)).decode()
    results = []
    for backend in (signing._sodium_open, None):
        monkeypatch.setattr(signing, "_sodium_open", backend)
        results.append([key.public.is_valid(s, domain=b"d", payload=b"payload") for s in (good, bad, flipped)])
    assert results[0] == results[1] == [True, False, False]
