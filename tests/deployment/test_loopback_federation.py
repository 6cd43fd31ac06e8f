"""End to end on a real SuperLink + 3 SuperNodes (TLS, node authentication) on loopback.

One deployment (conftest) runs 2 DP-GAN rounds and a synthesize query; each test checks one claim.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.config import load_site_config
from agent.models import initial_weights
from agent.training.local_round import current_epsilon
from coordinator.store import SyntheticStore
from protocols import messages as m
from protocols.ledger import LedgerEntry
from protocols.tasks import Task

pytestmark = [pytest.mark.deployment]


def test_two_rounds_complete_with_all_three_sites(deployment) -> None:
    s = deployment.summary
    assert s["rounds_completed"] == 2, s["stop_reason"]
    assert sorted(s["sites"].values()) == ["hospital-a", "hospital-b", "hospital-c"]
    assert [t["sites_trained"] for t in s["timings"][:2]] == [3, 3]
    assert s["refusals"] == []
    weights = np.load(deployment.output / "global_weights.npz")
    assert any(k.startswith("generator.") for k in weights.files) and any(k.startswith("critic.") for k in weights.files)


def test_synthetic_outputs_arrive_and_verify(deployment) -> None:
    outputs = deployment.summary["outputs"]
    assert sorted(o["site"] for o in outputs) == ["hospital-a", "hospital-b", "hospital-c"]
    with SyntheticStore(deployment.output / "store") as store:
        assert store.verify() == []
        for entry in store.entries():
            samples = store.load(entry.sha256)
            assert samples.shape == (4, 2, 32, 32)
            assert set(np.unique(samples[:, 1])) <= {0.0, 1.0}
            assert entry.guarantee.endswith("-DP, unit patient")


def test_coordinator_epsilon_equals_each_sites_own_accountant(deployment) -> None:
    budget = deployment.summary["budget"]
    for cfg_path in deployment.configs:
        site = load_site_config(cfg_path)
        own = current_epsilon(site, "tof")
        assert own > 0
        assert budget[site.site_id]["spent"] == pytest.approx(own, rel=1e-9, abs=1e-12)


def test_unregistered_node_is_rejected(deployment) -> None:
    assert len(deployment.summary["sites"]) == 3  # the intruder never became a node the coordinator saw
    assert "failed to activate supernode" in deployment.intruder_log.lower(), deployment.intruder_log[-2000:]
    registered = (deployment.logs / "supernode-hospital-a.log").read_text(errors="replace").lower()
    assert "failed to activate supernode" not in registered  # same software, registered key: accepted
    # its ClientApp never ran: the intruder's state folder holds only its keys
    assert not (deployment.root / "intruder-state" / "federation").exists()


def test_ledger_verifies_independently(deployment) -> None:
    ledger = deployment.output / "ledger" / "ledger.jsonl"
    assert ledger.is_file()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("anonfed")), "audit", "verify", str(ledger), "--keys",
         str(deployment.keys / "public"), "--store", str(deployment.output / "store")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(ledger.read_text().splitlines()) == 3 * 2 + 3  # 2 training claims + 1 release per site
    # Every site's signed claim names the model its round started from: round 1 the coordinator's
    # seed-0 initialisation, round 2 the round-1 average; the auditor states the run's start.
    claims = [LedgerEntry.from_line(line).claim for line in ledger.read_bytes().splitlines()]
    starts = {rnd: {c.start_weights_sha256 for c in claims if c.round == rnd and c.task is Task.DPGAN} for rnd in (1, 2)}
    first = m.weights_sha256(initial_weights("wgan-gp", 32, 0))
    assert starts[1] == {first}
    assert len(starts[2]) == 1 and None not in starts[2] and starts[2] != {first}
    assert f"started from weights_sha256 {first}" in proc.stdout


def test_superlink_speaks_only_tls(deployment) -> None:
    assert deployment.plain_http_error is not None  # plain HTTP is not served
    assert deployment.https_status is not None  # HTTPS verified against the consortium CA is
