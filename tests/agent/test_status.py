"""`anonfed agent status` on a phantom site: catalog counts, budget used and left, last round, PACS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from agent.config import load_site_config
from agent.status import gather_status
from protocols.cli import main
from protocols.tasks import PrivacyUnit


@pytest.fixture()
def phantom_site(tmp_path: Path, phantom_consortium) -> Path:  # noqa: ANN001 - shared fixture
    """A config for the fundus images of phantom site hospital-a, its own state folder, a dead PACS."""
    site = phantom_consortium.sites[0].site_id
    data = phantom_consortium.root / site
    cfg = {
        "site_id": site,
        "sources": [
            {"path": str(data / "fundus"), "fundus_grades_csv": str(data / "fundus" / "grades.csv")},  # fundus only: fast
            {"kind": "dicomweb", "name": "gone", "url": "http://127.0.0.1:9/dicom-web", "timeout_s": 1},
        ],
        "state_dir": str(tmp_path / "state"),
        "privacy": {"max_epsilon": 8.0, "delta": 1e-5},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_status_before_anything_ran_creates_nothing(phantom_site: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["agent", "status", "--config", str(phantom_site), "--no-pacs"]) == 0
    out = capsys.readouterr().out
    assert "catalog: none yet" in out and "nothing spent; 8 epsilon available" in out and "last round: none" in out
    assert not (phantom_site.parent / "state").exists()


def test_status_reports_catalog_budget_round_and_pacs(phantom_site: Path, capsys: pytest.CaptureFixture) -> None:
    from agent.dp.accounting import AccountantKind
    from agent.dp.durable_accountant import DurableAccountant, accountant_path
    from agent.ingest.pipeline import run_ingest

    cfg = load_site_config(phantom_site)
    ingest = run_ingest(cfg)
    accountant = DurableAccountant(accountant_path(cfg.state.accountant, "tof"), kind=AccountantKind.RDP, delta=1e-5)
    spent = accountant.reserve(noise_multiplier=1.1, sample_rate=0.1, steps=50, unit=PrivacyUnit.PATIENT, max_epsilon=8.0)
    fed = cfg.state.root / "federation"
    fed.mkdir(parents=True)
    (fed / "last_model.json").write_text(json.dumps({"run_id": "r-1", "round": 3, "dataset_id": "tof", "architecture": "wgan-gp"}))
    (fed / "last_model-stylegan-dp.json").write_text(json.dumps({"run_id": "r-2", "round": 2, "dataset_id": "fundus",
                                                                 "architecture": "tiny16"}))

    status = gather_status(cfg)
    assert status.catalog is not None and status.catalog["patients"] == ingest.patients
    assert sum(status.catalog["files"].values()) > 0
    (budget,) = status.budgets
    assert budget.epsilon == pytest.approx(spent) and budget.left == pytest.approx(8.0 - spent)
    assert status.last_rounds["dpgan"]["round"] == 3 and status.last_rounds["stylegan-dp"]["round"] == 2
    (pacs,) = status.pacs
    assert pacs.reachable is False and "cannot reach DICOMweb server" in pacs.detail
    assert not status.healthy

    assert main(["agent", "status", "--config", str(phantom_site), "--check"]) == 1
    text = capsys.readouterr().out
    assert f"epsilon used {spent:.3f} of 8, left {8.0 - spent:.3f}" in text
    assert "last dpgan round: 3 of run r-1" in text and "last stylegan-dp round: 2 of run r-2 (tiny16" in text
    assert "pacs gone (dicomweb http://127.0.0.1:9/dicom-web): UNREACHABLE" in text
    assert main(["agent", "status", "--config", str(phantom_site), "--json", "--no-pacs", "--check"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["healthy"] is True and doc["budgets"][0]["left"] == pytest.approx(8.0 - spent)


def test_unreadable_accountant_is_shown_not_hidden(phantom_site: Path) -> None:
    cfg = load_site_config(phantom_site)
    cfg.state.accountant.mkdir(parents=True)
    (cfg.state.accountant / "tof.json").write_text("{not json")
    status = gather_status(cfg, probe_pacs=False)
    assert status.budgets[0].error and not status.healthy
    assert "UNREADABLE" in status.describe()
    shutil.rmtree(cfg.state.root)
