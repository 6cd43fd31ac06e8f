"""DICOMweb over HTTPS with the hospital's own CA (``ca_file``); an unknown CA is refused."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pydicom
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
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
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


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture()
def https_pacs(tmp_path: Path, loaded_orthanc: Any, unused_port: int) -> Iterator[tuple[str, Path]]:
    """The session's real Orthanc behind an nginx TLS front with a private-CA certificate: (base URL, CA file).

    Orthanc 1.10 (Debian) crashes on its first HTTPS request; hospitals commonly terminate TLS in
    a reverse proxy in front of their PACS, which is what runs here.
    """
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (run deploy/install-system-deps.sh)")
    pem, ca = _ca_and_server(tmp_path / "pki")
    work = tmp_path / "nginx"
    work.mkdir()
    port = unused_port
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the temp folders below
    temps = " ".join(f"{kind}_temp_path {work / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (work / "nginx.conf").write_text(f"""
daemon off; {user} worker_processes 1; pid {work / 'nginx.pid'}; error_log {work / 'error.log'} warn;
events {{ worker_connections 64; }}
http {{
  access_log off; {temps}
  server {{
    listen 127.0.0.1:{port} ssl; server_name localhost;
    ssl_certificate {pem}; ssl_certificate_key {pem};
    location / {{ proxy_pass http://127.0.0.1:{loaded_orthanc.http_port}; proxy_read_timeout 60s; }}
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(work / 'error.log').read_text()[-1000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start listening")
            time.sleep(0.05)
        yield f"https://localhost:{port}/dicom-web", ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _config(url: str, **extra: Any) -> dict:
    source = {"kind": "dicomweb", "name": "tls", "url": url, "timeout_s": 5, **extra}
    return {"site_id": "hospital-a", "sources": [source], "state_dir": "state", "privacy": {"max_epsilon": 8, "delta": 1e-5}}


def test_sync_over_https_with_the_site_ca(
    tmp_path: Path, https_pacs: tuple[str, Path], loaded_orthanc: Any, pacs_password: str
) -> None:
    url, ca = https_pacs
    auth = {"username": loaded_orthanc.user, "password_env": "ANONFED_TEST_PACS_PASSWORD"}
    cfg = parse_site_config(_config(url, ca_file="pki/ca.crt", **auth), base_dir=tmp_path)
    assert cfg.sources[0].endpoint.ca_file == ca.resolve()
    report = sync_source(cfg, cfg.sources[0])
    stored = loaded_orthanc.instance_uids()
    assert report.instances_found == len(stored) and report.retrieved == len(stored) > 0
    staged = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in cfg.sources[0].path.rglob("*.dcm")}
    assert staged == stored  # every instance came through TLS byte-complete

    # Without the hospital CA the server's certificate is not trusted: no silent fallback.
    untrusted = parse_site_config(_config(url, name="untrusted", **auth), base_dir=tmp_path)
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
