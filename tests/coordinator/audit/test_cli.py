"""``anonfed audit verify`` and ``anonfed audit report`` end to end, incl. headless Chromium."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from coordinator.ledger import Ledger
from protocols import cli
from protocols.errors import ChainError, IntegrityError
from protocols.ledger import GENESIS, Artifact, ArtifactKind, MechanismKind, PlainMechanism, make_claim, sign_claim
from protocols.signing import SigningKey, save_public_key
from protocols.tasks import Task


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def test_verify_prints_ok_summary(ledger, key_dir, capsys) -> None:
    code = cli.main(["audit", "verify", str(ledger), "--keys", str(key_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK: chain of" in out and "OK: site hospital-a" in out and "OK: site hospital-b" in out
    assert "FAIL" not in out


def test_verify_fails_naming_the_first_bad_entry(ledger, key_dir, capsys) -> None:
    lines = _lines(ledger)
    del lines[3]
    ledger.write_bytes(b"".join(x + b"\n" for x in lines))
    code = cli.main(["audit", "verify", str(ledger), "--keys", str(key_dir)])
    out = capsys.readouterr().out
    assert code == ChainError.exit_code
    assert re.search(r"^FAIL: entry 3 \(site hospital-b\): ChainError", out, re.M), out
    assert "first bad: entry 3 (site hospital-b)" in out


@pytest.fixture
def stored_release(tmp_path):
    """A ledger with one synthetic release whose files are in a store named by sha256."""
    store = tmp_path / "store"
    store.mkdir()
    artifacts = []
    for i in range(2):
        content = f"synthetic image {i}".encode()
        digest = hashlib.sha256(content).hexdigest()
        (store / f"{digest}.dcm").write_bytes(content)
        artifacts.append(Artifact(f"image-{i}.dcm", ArtifactKind.SYNTHETIC, digest, len(content)))
    site, coord = SigningKey.generate(), SigningKey.generate()
    claim = make_claim(run_id="run-1", round=0, site="hospital-a", site_seq=0, site_prev=GENESIS, key_id=site.key_id,
                       task=Task.SYNTHESIZE, dataset="tof", mechanism=PlainMechanism(MechanismKind.POST_PROCESSING),
                       epsilon=0.0, cumulative_epsilon=0.0, artifacts=tuple(artifacts))
    path = tmp_path / "ledger.jsonl"
    with Ledger.open(path, coord) as ledger:
        ledger.append_site_claim(sign_claim(claim, site), site.public)
    keys = tmp_path / "keys"
    save_public_key(site.public, keys / "hospital-a.pub")
    save_public_key(coord.public, keys / "coordinator.pub")
    return path, keys, store, artifacts


def test_artifacts_are_checked_against_the_store(stored_release, capsys) -> None:
    path, keys, store, artifacts = stored_release
    argv = ["audit", "verify", str(path), "--keys", str(keys), "--store", str(store)]
    assert cli.main(argv) == 0
    target = store / f"{artifacts[1].sha256}.dcm"
    target.write_bytes(b"altered")
    capsys.readouterr()
    assert cli.main(argv) == IntegrityError.exit_code
    assert "artifact image-1.dcm: store file" in capsys.readouterr().out
    target.unlink()
    assert cli.main(argv) == IntegrityError.exit_code
    assert "artifact image-1.dcm: no file named" in capsys.readouterr().out


def test_a_store_file_no_entry_names_is_reported(stored_release, capsys) -> None:
    """An output held without a ledger record is visible to the auditor (a warning: the claims
    themselves still verify)."""
    path, keys, store, _ = stored_release
    unclaimed = b"released without a claim"
    (store / f"{hashlib.sha256(unclaimed).hexdigest()}.npy").write_bytes(unclaimed)
    assert cli.main(["audit", "verify", str(path), "--keys", str(keys), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^WARN: ledger: IntegrityError.*the store holds 1 file\(s\) that no ledger entry names: "
                     + hashlib.sha256(unclaimed).hexdigest(), out, re.M), out


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(html_path: Path) -> str:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (deploy/install-system-deps.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--dump-dom",
             html_path.resolve().as_uri()],
            capture_output=True, text=True, timeout=180,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_is_self_contained_and_renders_in_chromium(ledger, key_dir, tmp_path) -> None:
    out = tmp_path / "report.html"
    code = cli.main(["audit", "report", str(ledger), "-o", str(out), "--keys", str(key_dir), "--budget", "8",
                     "--site-budget", "hospital-a=6"])
    assert code == 0
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=['\"](?!data:)", text), "the report must not reference external assets"
    assert text.count("data:image/png;base64,") == 1  # one plot with every site's epsilon
    dom = _dump_dom(out)
    assert re.search(r"id=\"verdict\" class=\"verdict ok\">VERIFIED", dom), dom[:2000]
    for site in ("hospital-a", "hospital-b"):
        assert f'<td class="l site">{site}</td>' in dom
        assert f'id="site-{site}"' in dom
    assert dom.count("<tr") >= len(_lines(ledger)) + 3


def test_report_of_a_tampered_ledger_says_failed(ledger, key_dir, tmp_path) -> None:
    lines = _lines(ledger)
    lines[1], lines[2] = lines[2], lines[1]
    ledger.write_bytes(b"".join(x + b"\n" for x in lines))
    out = tmp_path / "report.html"
    assert cli.main(["audit", "report", str(ledger), "-o", str(out), "--keys", str(key_dir)]) == ChainError.exit_code
    dom = _dump_dom(out)
    assert re.search(r"class=\"verdict fail\">FAILED: first bad entry is entry 1 \(site hospital-a\)", dom), dom[:1500]


def test_report_without_keys_is_marked_unverified(ledger, tmp_path) -> None:
    out = tmp_path / "report.html"
    assert cli.main(["audit", "report", str(ledger), "-o", str(out)]) == 0
    assert "NOT VERIFIED" in out.read_text(encoding="utf-8")


def test_verify_of_a_missing_ledger_is_bad_input(tmp_path, key_dir, capsys) -> None:
    assert cli.main(["audit", "verify", str(tmp_path / "nope.jsonl"), "--keys", str(key_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
