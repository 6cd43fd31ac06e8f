"""Handlers: policy decisions, structured refusals, durable state, guarded replies (no Flower)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agent.site_service import handle_status, handle_synthesize, handle_train
from agent.site_service.policy import decide_train_terms
from protocols import messages as m
from protocols.tasks import PrivacyUnit, Task



def _train(round_: int = 1, **over) -> m.Envelope:
    base = dict(
        run_id="run-1", round=round_, task=Task.DPGAN, dataset_id="tof", architecture="wgan-gp", patch_size=8,
        patches_per_volume=2, local_steps=2, total_planned_steps=10, target_epsilon=8.0, delta=1e-3,
        unit=PrivacyUnit.IMAGE, expected_batch_patients=2, max_grad_norm=1.0, seed=1,
    )
    base.update(over)
    return m.Envelope(m.TrainInstruction(**base))


def _synth(count: int = 5) -> m.Envelope:
    return m.Envelope(m.SynthesizeQuery(run_id="run-1", round=9, count=count, seed=3, architecture="wgan-gp", patch_size=8))


def test_train_reply_carries_weights_spend_and_mechanism(site, engine) -> None:
    out = handle_train(site, _train(), engine=engine)
    reply = out.message
    assert isinstance(reply, m.TrainReply), reply
    assert reply.site_id == "hospital-t" and reply.num_patients == engine.patients
    assert reply.epsilon_cumulative == pytest.approx(engine.epsilon_spent(site, dataset_id="tof"))
    assert reply.weights_sha256 == m.weights_sha256(out.arrays)
    assert reply.noise_multiplier == 1.2 and reply.accountant == "rdp"
    # the site's stricter policy wins: its delta and patient-level unit
    assert reply.delta == 1e-5 and reply.unit is PrivacyUnit.PATIENT
    # the reply survives the Flower encoding
    back = m.from_recorddict(m.to_recorddict(out), expect=(m.TrainReply,))
    assert back.message == reply


def test_target_epsilon_is_capped_by_site_policy(site) -> None:
    terms = decide_train_terms(site, _train(target_epsilon=50.0).message, epsilon_spent=0.0)  # type: ignore[arg-type]
    assert terms.target_epsilon == site.privacy.max_epsilon


def test_exhausted_budget_refuses_without_training(site, engine) -> None:
    handle_train(site, _train(1), engine=engine)
    handle_train(site, _train(2), engine=engine)  # 3.0 of 4.0 spent: the next 1.5 would exceed
    out = handle_train(site, _train(3), engine=engine)
    assert isinstance(out.message, m.Refusal)
    assert out.message.code == "budget-exceeded" and out.message.exit_code == 11
    assert not out.arrays
    assert engine.epsilon_spent(site, dataset_id="tof") == pytest.approx(3.0)  # nothing spent by the refusal


def test_spent_budget_refuses_before_loading_data(tmp_path, make_site, engine_factory) -> None:
    site = make_site(tmp_path, max_epsilon=1.0)
    engine = engine_factory(eps_per_round=1.0)
    handle_train(site, _train(1), engine=engine)
    engine.load_data = None  # type: ignore[assignment]  # must not be reached
    out = handle_train(site, _train(2), engine=engine)
    assert out.message.code == "budget-exceeded"  # type: ignore[union-attr]


def test_task_not_accepted_is_refused(tmp_path, engine, make_site) -> None:
    site = make_site(tmp_path, accepted_tasks=["synthesize"])
    out = handle_train(site, _train(), engine=engine)
    assert out.message.code == "task-refused" and engine.trained == 0  # type: ignore[union-attr]


def test_too_few_patients_is_refused(tmp_path, make_site, engine_factory) -> None:
    site = make_site(tmp_path, min_patients=5)
    engine = engine_factory(patients=3)
    out = handle_train(site, _train(), engine=engine)
    assert out.message.code == "policy" and "min_patients=5" in out.message.reason  # type: ignore[union-attr]


def test_synthesize_before_training_is_refused(site, engine) -> None:
    out = handle_synthesize(site, _synth(), engine=engine)
    assert out.message.code == "bad-input" and "no trained model" in out.message.reason  # type: ignore[union-attr]


def test_synthesize_returns_samples_of_the_last_model_and_keeps_a_copy(site, engine) -> None:
    handle_train(site, _train(), engine=engine)
    out = handle_synthesize(site, _synth(5), engine=engine)
    reply = out.message
    assert isinstance(reply, m.SynthesizeReply), reply
    assert out.arrays["samples"].shape == (5, 2, 8, 8)
    assert reply.samples_sha256 == m.array_sha256(out.arrays["samples"])
    assert reply.model_round == 1 and reply.method == "dpgan-wgan-gp"
    kept = site.state.root / "federation" / "released" / f"{reply.samples_sha256}.npy"
    np.testing.assert_array_equal(np.load(kept), out.arrays["samples"])


def test_synthesize_with_other_architecture_is_refused(site, engine) -> None:
    handle_train(site, _train(), engine=engine)
    q = m.Envelope(m.SynthesizeQuery(run_id="run-1", round=9, count=2, seed=3, architecture="dcgan", patch_size=8))
    out = handle_synthesize(site, q, engine=engine)
    assert out.message.code == "bad-input"  # type: ignore[union-attr]


def test_status_reports_policy_and_spend(site, engine) -> None:
    handle_train(site, _train(), engine=engine)
    out = handle_status(site, m.Envelope(m.StatusQuery(run_id="run-1", dataset_id="tof")), engine=engine)
    reply = out.message
    assert isinstance(reply, m.StatusReply)
    assert reply.epsilon_spent == pytest.approx(1.5) and reply.max_epsilon == 4.0
    assert reply.accepted_tasks == ("dpgan", "synthesize") and reply.num_patients == engine.patients
    strict = dataclasses.replace(site, privacy=dataclasses.replace(site.privacy, min_k=7, ksalsa_groups="random"))
    reply = handle_status(strict, m.Envelope(m.StatusQuery(run_id="run-1", dataset_id="tof")), engine=engine).message
    assert (reply.min_k, reply.ksalsa_groups) == (7, "random")  # the k-SALSA policy, before any release round


def test_unexpected_error_becomes_generic_refusal(site, engine) -> None:
    def boom(*a, **k):
        raise RuntimeError("disk /secret/path/patient.dcm exploded")

    engine.load_data = boom  # type: ignore[assignment]
    out = handle_train(site, _train(), engine=engine)
    assert out.message.code == "internal-error"  # type: ignore[union-attr]
    assert "/secret" not in out.message.reason  # type: ignore[union-attr]


def test_refusal_reason_with_identifiers_is_withheld(site, engine) -> None:
    from protocols.errors import PolicyError

    def leaky(*a, **k):
        raise PolicyError("patient 0123456789abcdef0123456789abcdef at /data/x.dcm")

    engine.load_data = leaky  # type: ignore[assignment]
    out = handle_train(site, _train(), engine=engine)
    assert out.message.code == "policy"  # type: ignore[union-attr]
    assert "0123456789abcdef" not in out.message.reason and "withheld" in out.message.reason  # type: ignore[union-attr]
    log = (site.state.root / "federation" / "egress-blocked.jsonl").read_text()
    assert "0123456789abcdef" not in log and json.loads(log.splitlines()[0])["kind"] == "refusal"
