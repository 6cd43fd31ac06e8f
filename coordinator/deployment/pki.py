"""Certificates and keys the coordinator creates: a CA, the SuperLink's TLS certificate, the ledger key.

Sites create their own keys (``anonfed enroll``); only their public keys reach the coordinator.
Private keys are written with mode 0600 atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocols.atomic_files import write_bytes_atomic
from protocols.errors import BadInputError

VALID_DAYS = 365


@dataclasses.dataclass(frozen=True)
class ServerPki:
    """Paths of the CA certificate and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_server_pki(folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerPki:
    """A fresh CA and a server certificate for ``hosts`` (IP addresses or DNS names), under ``folder``.

    Existing files are kept (re-running the demo reuses them).

    Raises
    ------
    BadInputError
        If ``hosts`` is empty.
    """
    if not hosts:
        raise BadInputError("the server certificate needs at least one host name or IP address")
    folder = Path(folder)
    pki = ServerPki(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    if all(p.is_file() for p in (pki.ca_cert, pki.server_cert, pki.server_key)):
        return pki
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anonfed consortium CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    write_private(folder / "ca.key", ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    write_public(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(pki.server_key, server_key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    write_public(pki.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return pki


def make_coordinator_ledger_key(keys_dir: Path) -> Path:
    """The coordinator's Ed25519 ledger key (``coordinator.key``) and its public half in ``public/``."""
    from protocols.signing import SigningKey, save_private_key, save_public_key

    path = Path(keys_dir) / "coordinator.key"
    if not path.is_file():
        key = SigningKey.generate()
        save_private_key(key, path)
        save_public_key(key.public, Path(keys_dir) / "public" / "coordinator.pub")
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write key material with mode 0600 (atomic)."""
    write_bytes_atomic(path, data, mode=0o600)


def write_public(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=0o644)
