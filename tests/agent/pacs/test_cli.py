"""`anonfed pacs sync` and `anonfed pacs ping` against the loaded Orthanc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from protocols.cli import main

pytestmark = pytest.mark.orthanc


def _config(tmp_path: Path, server: Any, password_env: str) -> Path:
    cfg = {
        "site_id": "hospital-a",
        "sources": [
            {"kind": "dicomweb", "name": "web", "url": server.dicomweb_url, "username": server.user,
             "password_env": password_env, "filters": {"modalities": ["OP"]}},
        ],
        "state_dir": "state",
        "privacy": {"max_epsilon": 8.0, "delta": 1e-5},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sync_then_ping(tmp_path: Path, loaded_orthanc: Any, pacs_password: str, capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path, loaded_orthanc, "ANONFED_TEST_PACS_PASSWORD")
    assert main(["pacs", "sync", "--config", str(config), "--no-ingest"]) == 0
    out = capsys.readouterr().out
    assert "web: " in out and "0 already staged" in out and " retrieved (" in out
    assert main(["pacs", "sync", "--config", str(config), "--no-ingest"]) == 0
    assert "0 retrieved" in capsys.readouterr().out
    assert main(["pacs", "ping", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("OK: web (dicomweb ")
    # `anonfed agent status` shows the PACS as reachable, what is staged and the last sync.
    assert main(["agent", "status", "--config", str(config), "--check"]) == 0
    status = capsys.readouterr().out
    staged = len(list((tmp_path / "state" / "pacs" / "web").rglob("*.dcm")))
    assert staged > 0 and f"pacs web (dicomweb {loaded_orthanc.dicomweb_url}): reachable; {staged} instance(s) staged" in status
    assert f"ok, 0 retrieved of {staged} found" in status


def test_wrong_password_exit_code_and_message(
    tmp_path: Path, loaded_orthanc: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("WRONG_PW", "not-the-password")
    config = _config(tmp_path, loaded_orthanc, "WRONG_PW")
    assert main(["pacs", "sync", "--config", str(config)]) == 31  # AuthenticationError
    err = capsys.readouterr().err
    assert "refused the credentials (HTTP 401)" in err and "not-the-password" not in err
    assert main(["pacs", "ping", "--config", str(config)]) == 1
    assert capsys.readouterr().out.startswith("FAIL: web")
