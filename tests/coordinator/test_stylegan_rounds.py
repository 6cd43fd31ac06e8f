"""A 2-site stylegan-dp run in process: real site handlers and StyleGAN engine (tiny 16 px model on
fundus phantoms), FedAvg of the weights, per-site epsilon, a ledger the auditor's verify accepts."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.flower_client.enroll import enroll  # noqa: E402
from agent.site_service.claims import ledger_signer  # noqa: E402
from agent.site_service.stylegan_engine import StyleGanEngine  # noqa: E402
from agent.stylegan.config import TrainingConfig  # noqa: E402
from agent.training.local_round import current_epsilon  # noqa: E402
from coordinator.audit.verify import verify  # noqa: E402
from coordinator.deployment.pki import make_coordinator_ledger_key  # noqa: E402
from coordinator.rounds import FederationPlan  # noqa: E402
from coordinator.rounds.session import SessionPaths, run_session  # noqa: E402
from coordinator.strategy import fedavg  # noqa: E402
from protocols import messages as m  # noqa: E402
from protocols.errors import ConfigError  # noqa: E402
from protocols.ledger import DpSgdMechanism, LedgerEntry  # noqa: E402
from protocols.signing import load_key_directory  # noqa: E402
from protocols.tasks import Task  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_two_site_stylegan_dp_run_aggregates_tracks_epsilon_and_verifies(tmp_path, tiny_fundus, transport_for) -> None:
    keys = tmp_path / "coordinator-keys"
    make_coordinator_ledger_key(keys)
    nodes = {}
    for i, photos in enumerate((tiny_fundus, tiny_fundus[:8])):  # different patients and counts per site
        site = _site(tmp_path / f"site{i}", f"hospital-{'ab'[i]}")
        enrolled = enroll(site)
        shutil.copyfile(enrolled.ledger_public_key, keys / "public" / f"{site.site_id}.pub")
        engine = StyleGanEngine(load_images=lambda s, p=photos: p, training=TrainingConfig(batch_size=4))
        nodes[100 + i] = (site, engine)
    transport = transport_for(nodes, sign_claim=ledger_signer)
    plan = FederationPlan(task=Task.STYLEGAN_DP, rounds=2, architecture="tiny16", patch_size=16, patches_per_volume=2,
                          local_steps=2, target_epsilon=6.0, delta=1e-5, expected_batch_patients=3,
                          dataset_id="fundus", consortium_budget=10.0, synth_count=4, run_id="run-sg")
    out = tmp_path / "out"
    result = run_session(transport, plan, SessionPaths(out, keys))

    assert result.rounds_completed == 2, result.stop_reason
    assert [t.sites_trained for t in result.timings] == [2, 2] and result.refusals == []
    assert result.outputs == []  # no synthesize query: the aggregated generator is the release
    assert {kind for _, kind, _ in transport.sent} <= {m.TrainInstruction.KIND, m.StatusQuery.KIND}
    # Round 1 starts from the round seed at every site; round 2 from the patient-weighted average of round 1.
    assert all(not arrays for (rnd, _), arrays in transport.train_requests.items() if rnd == 1)
    for rnd in (1, 2):
        replies = [transport.train_replies[(rnd, n)] for n in sorted(nodes)]
        expected = fedavg([(dict(r.arrays), r.message.num_patients) for r in replies])
        got = transport.train_requests[(2, 100)] if rnd == 1 else result.weights
        assert set(got) == set(expected)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    patients = [len({p.patient_key for p in photos}) for photos in (tiny_fundus, tiny_fundus[:8])]
    assert [transport.train_replies[(1, n)].message.num_patients for n in sorted(nodes)] == patients
    spec = nodes[100][1].reference_weights(architecture="tiny16", patch_size=16)
    saved = np.load(out / "global_weights.npz")
    assert set(saved.files) == set(spec) and all(saved[k].dtype == np.float32 for k in saved.files)

    # Per-site epsilon is each site's own accountant, never averaged.
    for site, _ in nodes.values():
        assert result.budget[site.site_id]["spent"] == pytest.approx(current_epsilon(site, "fundus"), rel=1e-12)
        assert result.budget[site.site_id]["rounds_trained"] == 2

    # The ledger: one stylegan-dp DP-SGD claim per site and round, recomputed by the auditor's verify.
    ledger = out / "ledger" / "ledger.jsonl"
    audit = verify(ledger, load_key_directory(keys / "public"))
    assert audit.ok and audit.entries == 4
    claims = [LedgerEntry.from_line(line).claim for line in ledger.read_bytes().splitlines()]
    assert {c.task for c in claims} == {Task.STYLEGAN_DP} and {c.dataset for c in claims} == {"fundus"}
    assert all(isinstance(c.mechanism, DpSgdMechanism) and c.mechanism.steps == 2 for c in claims)
    last = {c.site: c.cumulative_epsilon for c in claims}
    assert last == pytest.approx({s: float(b["spent"]) for s, b in result.budget.items()})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["consortium_epsilon_max_over_sites"] == pytest.approx(max(last.values()))


def _site(root: Path, site_id: str):
    from agent.config import parse_site_config

    (root / "data").mkdir(parents=True)
    raw = {"site_id": site_id, "sources": [{"path": "data"}], "state_dir": "state",
           "privacy": {"max_epsilon": 8.0, "delta": 1e-5, "accepted_tasks": ["stylegan-dp", "dpgan"]}}
    return parse_site_config(raw, base_dir=root)


def test_plan_reads_the_task_from_the_run_config() -> None:
    plan = FederationPlan.from_run_config({"task": "stylegan-dp", "architecture": "small64", "patch-size": 64,
                                           "dataset-id": "fundus"})
    assert plan.task is Task.STYLEGAN_DP
    assert plan.train_instruction(1).task is Task.STYLEGAN_DP
    assert FederationPlan.from_run_config({}).task is Task.DPGAN
    with pytest.raises(ConfigError, match="never leave their site"):
        FederationPlan.from_run_config({"task": "stylegan-local"})
    with pytest.raises(ConfigError, match="'task'"):
        FederationPlan.from_run_config({"task": "stylegan"})


def test_reply_for_another_task_is_rejected(tmp_path, consortium) -> None:
    from coordinator.budget import ConsortiumBudget
    from coordinator.rounds import run_federation

    t = consortium(budgets=(9.0, 9.0, 9.0))
    real_exchange = t.exchange

    def relabel(requests, *, round_, timeout_s):  # a site answering a dpgan round with a stylegan-dp model
        replies = real_exchange(requests, round_=round_, timeout_s=timeout_s)
        for node, env in replies.items():
            if isinstance(env, m.Envelope) and isinstance(env.message, m.TrainReply) and node == 1001:
                replies[node] = dataclasses.replace(env, message=dataclasses.replace(env.message,
                                                                                     task=Task.STYLEGAN_DP))
        return replies

    t.exchange = relabel
    plan = FederationPlan(rounds=1, patch_size=8, synth_count=0, run_id="run-x")
    init = t.nodes[1000][1].reference_weights(architecture=plan.architecture, patch_size=8)
    result = run_federation(t, plan, budget=ConsortiumBudget(10.0), store=None, initial_weights=init)
    assert [(r["site"], r["code"]) for r in result.refusals] == [("hospital-b", "rejected")]
    assert "for task stylegan-dp" in str(result.refusals[0]["reason"])
    assert result.timings[0].sites_trained == 2
