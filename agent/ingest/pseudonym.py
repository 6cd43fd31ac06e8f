"""Keyed pseudonyms for patients, UIDs and paths, and encryption of the paths the catalog keeps.

Decision (privacy): real identifiers are **not stored at all**. The catalog keeps only
``patient_key = HMAC-SHA256(site secret, "patient\\0" + real id)`` (hex, first 32 characters =
128 bits). Study, series and instance UIDs are keyed the same way with their own domain prefix,
so the catalog cannot be joined with PACS records without the site secret. File paths are needed
to re-read a file and to show the operator which file is quarantined, but folder and file names
often contain MRNs: the catalog stores them encrypted (AES-256-GCM with a second site key) and
looks them up by ``HMAC(secret, "path\\0" + path)``. Losing ``state/keys`` therefore means a
fresh catalog (new pseudonyms), never a leak.

Which real identifier is keyed: DICOM PatientID; for an anonymised DICOM study without one, its
StudyInstanceUID (each such study then counts as its own patient, which a site must know when it
relies on patient-level DP); for NIfTI and PNG/JPEG files, the naming rule or the CSV column (see
:mod:`agent.ingest.nifti_files` and :mod:`agent.ingest.fundus_files`).

Keys are 32 random bytes created on first use in ``state/keys/`` (``pseudonym.key``,
``path.key``), written atomically with mode 0600. A different site secret gives different keys,
so pseudonyms cannot be linked across sites.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols.errors import IntegrityError

log = logging.getLogger(__name__)

KEY_BYTES = 32
PSEUDONYM_KEY_FILE = "pseudonym.key"
PATH_KEY_FILE = "path.key"
_KEY_HEX_CHARS = 32


def load_or_create_key(path: Path) -> bytes:
    """Return the 32-byte key at ``path``, creating it (atomically, mode 0600) if absent.

    Raises
    ------
    IntegrityError
        If the file exists but does not hold exactly 32 bytes (a truncated or foreign file);
        replacing it would silently change every pseudonym, so the operator must decide.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create_key(path)
    if len(data) != KEY_BYTES:
        raise IntegrityError(
            f"site key {path.name}: expected {KEY_BYTES} bytes, found {len(data)}; restore it from "
            "backup, or delete it to start a new catalog with new pseudonyms"
        )
    return data


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if another process created the key first: then use theirs.
        os.link(tmp, path)
    except FileExistsError:
        return load_or_create_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created site key %s", path.name)
    return key


class SiteSecrets:
    """The site's pseudonymisation and path-encryption keys.

    Parameters
    ----------
    keys_dir
        ``cfg.state.keys``; created with mode 0700 if missing.
    """

    def __init__(self, keys_dir: Path) -> None:
        self._pseudonym_key = load_or_create_key(keys_dir / PSEUDONYM_KEY_FILE)
        self._aead = AESGCM(load_or_create_key(keys_dir / PATH_KEY_FILE))

    def _mac(self, domain: str, value: str) -> str:
        msg = domain.encode() + b"\0" + value.encode("utf-8", "surrogateescape")
        return hmac.new(self._pseudonym_key, msg, hashlib.sha256).hexdigest()[:_KEY_HEX_CHARS]

    def patient_key(self, real_id: str) -> str:
        """Pseudonymous patient key; the same real id always gives the same key at this site."""
        return self._mac("patient", real_id.strip())

    def uid_key(self, kind: str, uid: str) -> str:
        """Keyed hash of a DICOM UID (``kind`` separates studies, series and instances)."""
        return self._mac(kind, uid.strip())

    def path_key(self, path: Path | str) -> str:
        """Lookup key of a file path (stable across runs)."""
        return self._mac("path", str(path))

    def encrypt_path(self, path: Path | str) -> bytes:
        """Nonce + AES-GCM ciphertext of ``path``."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, str(path).encode("utf-8", "surrogateescape"), b"path")

    def decrypt_path(self, blob: bytes) -> Path:
        """Inverse of :meth:`encrypt_path`.

        Raises
        ------
        IntegrityError
            If the blob was not made with this site's path key.
        """
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], b"path")
        except Exception as exc:  # cryptography raises InvalidTag without a message
            raise IntegrityError(
                "catalog path entry does not decrypt with this site's path key; the catalog and "
                "state/keys do not belong together (restore the matching keys or rebuild the catalog)"
            ) from exc
        return Path(plain.decode("utf-8", "surrogateescape"))
