"""DICOMweb over HTTPS with the hospital's own CA (``ca_file``); an unknown CA is refused."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agent.config import parse_site_config
from agent.pacs.sync import sync_source
from protocols.errors import ConfigError, TransportError

def _ca_and_server(folder: Path) -> tuple[Path, Path]:
    """A test CA and a server certificate for localhost; returns (server PEM with key, CA PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anonfed test hospital CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # Orthanc 1.10 crashes on EC keys
    server = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = folder / "server.pem"
    pem.write_bytes(
        server.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    ca_file = folder / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return pem, ca_file


class _QidoStub(http.server.BaseHTTPRequestHandler):
    """Answers every QIDO-RS request with an empty result, as a PACS with no matching series."""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def https_pacs(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTPS DICOMweb stub with a certificate from a private CA: (base URL, CA file).

    Orthanc 1.10 (Debian) crashes on its first HTTPS request, so TLS is checked against this stub.
    """
    pem, ca = _ca_and_server(tmp_path / "pki")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QidoStub)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}/dicom-web", ca
    finally:
        server.shutdown()
        server.server_close()


def _config(url: str, **extra: Any) -> dict:
    source = {"kind": "dicomweb", "name": "tls", "url": url, "timeout_s": 5, **extra}
    return {"site_id": "hospital-a", "sources": [source], "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5}}


def test_sync_over_https_with_the_site_ca(tmp_path: Path, https_pacs: tuple[str, Path]) -> None:
    url, ca = https_pacs
    cfg = parse_site_config(_config(url, ca_file="pki/ca.crt"), base_dir=tmp_path)
    assert cfg.sources[0].endpoint.ca_file == ca.resolve()
    report = sync_source(cfg, cfg.sources[0])
    assert report.series_found == 0 and report.retrieved == 0

    # Without the hospital CA the server's certificate is not trusted: no silent fallback.
    untrusted = parse_site_config(_config(url, name="untrusted"), base_dir=tmp_path)
    with pytest.raises(TransportError, match="is not trusted .*set ca_file"):
        sync_source(untrusted, untrusted.sources[0])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"ca_file": "missing.crt"}, r"sources\[0\]\.ca_file: CA file .* does not exist"),
        ({"url": "http://127.0.0.1:1/dicom-web", "ca_file": "x.crt"}, r"sources\[0\]\.ca_file: only applies to an https"),
    ],
)
def test_ca_file_errors_name_the_key(tmp_path: Path, extra: dict, match: str) -> None:
    raw = {"site_id": "hospital-a", "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5},
           "sources": [{"kind": "dicomweb", "url": "https://pacs.example/dicom-web", **extra}]}
    with pytest.raises(ConfigError, match=match):
        parse_site_config(raw, base_dir=tmp_path)
