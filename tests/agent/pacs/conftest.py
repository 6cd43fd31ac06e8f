"""A real Orthanc PACS on loopback for the PACS tests, loaded with phantom and pydicom example studies.

Orthanc 1.10 listens on all interfaces, so the config refuses remote HTTP access, requires a
password, and only knows the agent's AE title. It runs as a plain background process (no Docker).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "anonfed", "correct-horse-battery"
AGENT_AE, ORTHANC_AE = "ANONFED", "ORTHANCTEST"
# Real example files shipped with pydicom, with distinct SOP Instance UIDs: several modalities,
# compressed transfer syntaxes, an enhanced multi-frame MR and a SEG.
PYDICOM_EXAMPLES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "emri_small.dcm",
    "SC_rgb.dcm",
    "liver.dcm",
    "examples_ybr_color.dcm",
    "693_J2KI.dcm",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class OrthancServer:
    """Handle on a running Orthanc: ports, credentials, REST helpers."""

    http_port: int
    dicom_port: int
    agent_scp_port: int  # where Orthanc sends C-MOVE results for AGENT_AE
    process: subprocess.Popen
    workdir: Path
    user: str = USER
    password: str = PASSWORD
    aet: str = ORTHANC_AE
    agent_ae: str = AGENT_AE

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def rest(self, path: str, *, data: bytes | None = None, method: str | None = None) -> object:
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def upload(self, path: Path) -> str:
        """POST one DICOM file; returns Orthanc's instance id."""
        return self.rest("/instances", data=path.read_bytes())["ID"]  # type: ignore[index]

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs currently stored."""
        found = self.rest("/tools/find", data=json.dumps({"Level": "Instance", "Query": {}, "Expand": True}).encode())
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in found}  # type: ignore[union-attr]

    def delete_all(self) -> None:
        for pid in self.rest("/patients"):  # type: ignore[union-attr]
            self.rest(f"/patients/{pid}", method="DELETE")


def start_orthanc(workdir: Path, *, extra_modalities: dict[str, list] | None = None) -> OrthancServer:
    """Start Orthanc with DICOMweb, auth and a registered agent modality; wait until it answers.

    Orthanc 1.10 (Debian) crashes on its first HTTPS request, so it always serves plain HTTP here.
    """
    if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc or its DICOMweb plugin is not installed (run deploy/install-system-deps.sh)")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, agent_port = free_port(), free_port(), free_port()
    modalities = {"agent": [AGENT_AE, "127.0.0.1", agent_port]}
    modalities.update(extra_modalities or {})
    config = {
        "Name": "anonfed-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        "DicomModalities": modalities,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckCalledAet": True,
        "StorageCompression": False,
        "HttpThreadsCount": 8,
        "DicomThreadsCount": 4,
        "ConcurrentJobs": 2,
        "SaveJobs": False,
        "DicomScuTimeout": 10,
        "StableAge": 1,
    }
    cfg_path = workdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen([str(ORTHANC), str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = OrthancServer(http_port, dicom_port, agent_port, proc, workdir)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {(workdir / 'orthanc.log').read_text()[-2000:]}")
        try:
            server.rest("/system")
            if server.rest("/plugins") and "dicom-web" in server.rest("/plugins"):  # type: ignore[operator]
                return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_orthanc(server)
            raise RuntimeError("Orthanc did not answer within 30 s")
        time.sleep(0.1)


def stop_orthanc(server: OrthancServer) -> None:
    # Its storage is a temp folder, so no clean shutdown is needed (a clean one takes ~3 s).
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(timeout=10)


def phantom_dicom_files(site_root: Path) -> list[Path]:
    """The DICOM files (TOF MR series + SEG, fundus OP) of one phantom site."""
    return sorted(p for p in site_root.rglob("*.dcm") if p.is_file())


def pydicom_example_files() -> list[Path]:
    files = []
    for name in PYDICOM_EXAMPLES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            files.append(Path(path))
    return files


@pytest.fixture(scope="session")
def pacs_input_files(phantom_consortium) -> list[Path]:  # noqa: ANN001 - fixture from tests/conftest.py
    """Phantom studies of one site plus real pydicom examples: the files loaded into Orthanc."""
    phantoms = phantom_dicom_files(phantom_consortium.root / phantom_consortium.sites[0].site_id)
    examples = pydicom_example_files()
    assert phantoms and len(examples) == len(PYDICOM_EXAMPLES)
    return phantoms + examples


@pytest.fixture(scope="session")
def loaded_orthanc(tmp_path_factory: pytest.TempPathFactory, pacs_input_files: list[Path]) -> Iterator[OrthancServer]:
    """One Orthanc for the session, loaded once; tests must not add or delete its instances."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        for path in pacs_input_files:
            server.upload(path)
        yield server
    finally:
        stop_orthanc(server)


@pytest.fixture()
def empty_orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc for a test that writes to it (pushes)."""
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        stop_orthanc(server)


@pytest.fixture()
def pacs_password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANONFED_TEST_PACS_PASSWORD", PASSWORD)
    return PASSWORD


@pytest.fixture()
def unused_port() -> int:
    return free_port()
