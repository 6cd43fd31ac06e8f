"""Site-side commands: ``anonfed keys create --config`` and ``anonfed ledger show``."""

from __future__ import annotations

import stat

import pytest
import yaml

from agent.config import load_site_config
from agent.ledger import SiteClaimLog, claim_log_path, load_site_key, sign_claim
from coordinator.ledger import Ledger
from protocols import cli
from protocols.errors import ChainError
from protocols.ledger import DpSgdMechanism, KAnonRelease, MechanismKind, PlainMechanism
from protocols.signing import SigningKey
from protocols.tasks import PrivacyUnit, Task


@pytest.fixture
def site_yaml(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "site_id": "hospital-a", "sources": [{"path": "data"}], "state_dir": "state",
        "privacy": {"max_epsilon": 8, "delta": "1e-5", "accepted_tasks": ["ksalsa"]},
    }))
    return path


def test_keys_create_for_a_site_and_show_its_claims(site_yaml, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SITE_PW", "a long site passphrase")
    monkeypatch.setenv("ANONFED_KEY_PASSPHRASE", "a long site passphrase")
    assert cli.main(["keys", "create", "--config", str(site_yaml), "--passphrase-env", "SITE_PW"]) == 0
    cfg = load_site_config(site_yaml)
    key_file = cfg.state.keys / "hospital-a.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = load_site_key(cfg)
    assert cli.main(["keys", "export", str(key_file), "--out", str(tmp_path / "auditor"), "--passphrase-env", "SITE_PW"]) == 0
    assert (tmp_path / "auditor" / "hospital-a.pub").exists()

    log = SiteClaimLog(claim_log_path(cfg.state.root))
    for i in range(2):
        claim = log.new_claim(run_id="run-1", round=i, site="hospital-a", key_id=key.key_id, task=Task.KSALSA,
                              dataset="fundus", mechanism=PlainMechanism(MechanismKind.K_ANONYMITY), epsilon=0.0,
                              cumulative_epsilon=0.0, kanon=KAnonRelease(5, 5, (5, 6)))
        log.record(sign_claim(claim, key))
    dp = log.new_claim(run_id="run-2", round=1, site="hospital-a", key_id=key.key_id, task=Task.DPGAN, dataset="tof",
                       mechanism=DpSgdMechanism(1.0, 0.05, 10, 1.0, 1e-5, PrivacyUnit.PATIENT, "opacus-prv"),
                       epsilon=0.5, cumulative_epsilon=0.5, start_weights_sha256="ab12" * 16)
    log.record(sign_claim(dp, key))
    ledger_path = tmp_path / "ledger.jsonl"
    with Ledger.open(ledger_path, SigningKey.generate()) as ledger:
        ledger.append_site_claim(log.claims()[0], key.public)  # the coordinator "forgets" claim 1
    capsys.readouterr()
    assert cli.main(["ledger", "show", "--config", str(site_yaml)]) == 0
    out = capsys.readouterr().out
    assert "site hospital-a: 3 signed claim(s)" in out and out.count("k-anonymity") == 2
    assert "started from" in out and ("ab12" * 3) in out  # the DP claim's starting model, shortened
    assert cli.main(["ledger", "show", "--config", str(site_yaml), "--ledger", str(ledger_path)]) == ChainError.exit_code
    assert "FAIL: omitted: claim 1 of site hospital-a" in capsys.readouterr().out


def test_keys_create_needs_a_target(capsys) -> None:
    assert cli.main(["keys", "create", "--name", "coordinator"]) == 2
    assert "give --config site.yaml, or both --name and --out" in capsys.readouterr().err
