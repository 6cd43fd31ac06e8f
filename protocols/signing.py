"""Ed25519 keys and signatures for the privacy ledger (``cryptography``).

Invariants:

- A private key file is PKCS#8 PEM, created with mode 0600 (never readable by group/others, even
  for an instant: the temp file is opened 0600 before any byte is written), written atomically,
  optionally encrypted with a passphrase. Loading refuses a private key file readable by group or
  others, and an encrypted key without the right passphrase.
- A public key file is SubjectPublicKeyInfo PEM (``NAME.pub``); an auditor's key folder holds
  ``coordinator.pub`` and one ``<site-id>.pub`` per site.
- Every signature covers ``domain tag + NUL + canonical bytes`` (:func:`protocols.canonical.tagged`),
  so a site claim signature can never pass as a countersignature and vice versa.
- Signatures travel as standard base64 text (88 characters for 64 bytes).
- A key id is the first 16 bytes (hex) of a domain-tagged SHA-256 of the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.atomic_files import write_bytes_atomic
from protocols.canonical import tagged
from protocols.errors import BadInputError, SignatureError

try:  # optional: libsodium checks an Ed25519 signature in ~60 us of CPU here, OpenSSL in ~110 us
    from nacl.bindings import crypto_sign_open as _sodium_open
    from nacl.exceptions import BadSignatureError as _SodiumBadSignature
except ImportError:  # pragma: no cover - depends on the installation
    _sodium_open = None

log = logging.getLogger(__name__)

# Which implementation checks signatures: "libsodium" if PyNaCl is installed, else "openssl".
# Both implement RFC 8032 Ed25519; libsodium additionally rejects small-order points, so it is
# never more permissive. Signing always uses ``cryptography`` (OpenSSL).
VERIFY_BACKEND = "libsodium" if _sodium_open is not None else "openssl"

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_KEY_ID_DOMAIN = b"anonfed/key-id/v1"
_MIN_PASSPHRASE = 8


def key_id_of(raw_public: bytes) -> str:
    """Short stable fingerprint (32 hex chars) of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(tagged(_KEY_ID_DOMAIN, raw_public)).hexdigest()[:32]


class VerifyKey:
    """An Ed25519 public key that checks signatures over domain-tagged bytes."""

    __slots__ = ("_key", "raw", "key_id")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id: str = key_id_of(self.raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> "VerifyKey":
        """Build from the 32 raw public-key bytes."""
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise BadInputError(f"not an Ed25519 public key: expected 32 raw bytes, got {len(raw)}") from exc

    def verify(self, signature_b64: str, *, domain: bytes, payload: bytes, what: str = "signature") -> None:
        """Check ``signature_b64`` over ``tagged(domain, payload)``.

        Raises
        ------
        SignatureError
            If the signature is malformed or does not verify with this key.
        """
        try:
            sig = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise SignatureError(f"{what}: not valid base64") from exc
        if len(sig) != 64 or base64.b64encode(sig).decode("ascii") != signature_b64:
            raise SignatureError(f"{what}: expected the canonical base64 of a 64-byte Ed25519 signature")
        if not self._check(sig, tagged(domain, payload)):
            raise SignatureError(f"{what} does not verify with key {self.key_id}")

    def is_valid(self, signature_b64: str, *, domain: bytes, payload: bytes) -> bool:
        """Like :meth:`verify` but returns ``False`` instead of raising (hot path of the auditor)."""
        try:
            sig = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            return False
        # Canonical base64 only: the last character before "==" has unused bits, and a signature
        # text that decodes to the same bytes would otherwise change an entry without a finding.
        if len(sig) != 64 or base64.b64encode(sig).decode("ascii") != signature_b64:
            return False
        if _sodium_open is not None:  # one concatenation: signature + tagged message
            try:
                _sodium_open(b"".join((sig, tagged(domain, b""), payload)), self.raw)
            except (_SodiumBadSignature, ValueError):
                return False
            return True
        return self._check(sig, tagged(domain, payload))

    def _check(self, sig: bytes, message: bytes) -> bool:
        if _sodium_open is not None:
            try:
                _sodium_open(sig + message, self.raw)
            except (_SodiumBadSignature, ValueError):
                return False
            return True
        try:
            self._key.verify(sig, message)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id})"


class SigningKey:
    """An Ed25519 private key; never leaves the machine it was created on."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> "SigningKey":
        """A fresh random key pair."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, *, domain: bytes, payload: bytes) -> str:
        """Base64 Ed25519 signature over ``tagged(domain, payload)``."""
        return base64.b64encode(self._key.sign(tagged(domain, payload))).decode("ascii")

    def __repr__(self) -> str:  # never show key material
        return f"SigningKey({self.key_id})"


def _write_key(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise BadInputError(f"{path} already exists; refusing to overwrite a key (remove it first or choose another name)")
    write_bytes_atomic(path, data, mode=mode)


def save_private_key(key: SigningKey, path: Path, *, passphrase: bytes | None = None, overwrite: bool = False) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600, encrypted if ``passphrase`` is given.

    Raises
    ------
    BadInputError
        If the file exists and ``overwrite`` is false, or the passphrase is shorter than 8 bytes.
    """
    if passphrase is not None:
        if len(passphrase) < _MIN_PASSPHRASE:
            raise BadInputError(f"passphrase: expected at least {_MIN_PASSPHRASE} bytes, got {len(passphrase)}")
        enc: serialization.KeySerializationEncryption = serialization.BestAvailableEncryption(passphrase)
    else:
        enc = serialization.NoEncryption()
    pem = key._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    _write_key(Path(path), pem, mode=0o600, overwrite=overwrite)
    log.info("wrote private key %s (id %s, %s)", Path(path).name, key.key_id, "encrypted" if passphrase else "unencrypted")


def save_public_key(key: VerifyKey, path: Path, *, overwrite: bool = True) -> None:
    """Write ``key`` as SubjectPublicKeyInfo PEM (mode 0644)."""
    _write_key(Path(path), key.to_pem(), mode=0o644, overwrite=overwrite)


def load_private_key(path: Path, *, passphrase: bytes | None = None) -> SigningKey:
    """Read a private key written by :func:`save_private_key`.

    Raises
    ------
    BadInputError
        If the file is missing, readable by group or others, not an Ed25519 key, encrypted and the
        passphrase is missing or wrong, or not encrypted but a passphrase was given.
    """
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read private key {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInputError(
            f"private key {path} has mode {stat.S_IMODE(st.st_mode):04o}; expected 0600 "
            f"(run `chmod 600 {path}`; and consider the key exposed if others could read it)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise BadInputError(f"private key {path} is encrypted: a passphrase is required") from exc
        raise BadInputError(f"private key {path} is not encrypted: do not pass a passphrase") from exc
    except ValueError as exc:
        raise BadInputError(f"cannot load private key {path}: wrong passphrase or not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInputError(f"private key {path} is {type(key).__name__}, expected Ed25519")
    return SigningKey(key)


def load_public_key(path: Path) -> VerifyKey:
    """Read a public key PEM written by :func:`save_public_key`.

    Raises
    ------
    BadInputError
        If the file is missing or not an Ed25519 public key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read public key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BadInputError(f"{path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BadInputError(f"public key {path} is {type(key).__name__}, expected Ed25519")
    return VerifyKey(key)


def load_key_directory(directory: Path) -> dict[str, VerifyKey]:
    """All ``NAME.pub`` files of an auditor's key folder, by NAME (``coordinator`` and site ids).

    Raises
    ------
    BadInputError
        If the folder is missing or holds no public key, or a file is not an Ed25519 public key.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError(f"key folder {directory} does not exist (export keys with `anonfed keys export`)")
    keys = {p.name[: -len(PUBLIC_SUFFIX)]: load_public_key(p) for p in sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))}
    if not keys:
        raise BadInputError(f"key folder {directory} holds no *.pub files (expected coordinator.pub and <site>.pub)")
    return keys
