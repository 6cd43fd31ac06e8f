"""The wire contract: types, versioning, unknown fields, Flower round trips, canonical hashes."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from protocols import messages as m
from protocols.errors import MessageSchemaError
from protocols.tasks import PrivacyUnit, Task


def _instruction(**over) -> m.TrainInstruction:
    base = dict(
        run_id="run-1", round=1, task=Task.DPGAN, dataset_id="tof", architecture="wgan-gp", patch_size=32,
        patches_per_volume=8, local_steps=2, total_planned_steps=10, target_epsilon=8.0, delta=1e-5,
        unit=PrivacyUnit.PATIENT, expected_batch_patients=4, max_grad_norm=1.0, seed=7,
    )
    base.update(over)
    return m.TrainInstruction(**base)


def _train_reply(**over) -> m.TrainReply:
    base = dict(
        run_id="run-1", round=1, site_id="hospital-a", task=Task.DPGAN, num_patients=6, weights_sha256="a" * 64,
        epsilon_round=1.5, epsilon_cumulative=2.0, epsilon_next=2.6, delta=1e-5, unit=PrivacyUnit.PATIENT, noise_multiplier=1.1,
        sample_rate=0.5, steps=4, max_grad_norm=1.0, accountant="prv", claim=b"signed",
    )
    base.update(over)
    return m.TrainReply(**base)


def test_messages_are_frozen() -> None:
    msg = _instruction()
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.round = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("round", True, "got a bool"),
        ("delta", 1, "must be a float"),
        ("patch_size", "32", "must be int"),
        ("target_epsilon", float("nan"), "finite"),
        ("unit", "patient", "must be a PrivacyUnit"),
        ("run_id", None, "required"),
    ],
)
def test_wrong_types_are_rejected(field: str, value: object, pattern: str) -> None:
    with pytest.raises(MessageSchemaError, match=pattern):
        _instruction(**{field: value})


def test_semantic_rules_are_enforced() -> None:
    with pytest.raises(MessageSchemaError, match="must not exceed total_planned_steps"):
        _instruction(local_steps=11)
    with pytest.raises(MessageSchemaError, match="needs target_epsilon"):
        _instruction(target_epsilon=None)
    with pytest.raises(MessageSchemaError, match="must state the mechanism field 'noise_multiplier'"):
        _train_reply(noise_multiplier=None)
    with pytest.raises(MessageSchemaError, match="epsilon_round <= epsilon_cumulative"):
        _train_reply(epsilon_round=3.0, epsilon_cumulative=2.0)
    with pytest.raises(MessageSchemaError, match="epsilon_next must be >= epsilon_cumulative"):
        _train_reply(epsilon_next=1.0)
    with pytest.raises(MessageSchemaError, match="64 lowercase hex"):
        _train_reply(weights_sha256="/data/patient/1.dcm")
    with pytest.raises(MessageSchemaError, match="at most"):
        _train_reply(claim=b"x" * (m.MAX_BYTES + 1))


def test_unknown_and_missing_fields_are_rejected() -> None:
    raw = _instruction().to_config()
    with pytest.raises(MessageSchemaError, match="unknown field 'pixels'"):
        m.TrainInstruction.from_config({**raw, "pixels": b"\x00"})
    raw.pop("seed")
    with pytest.raises(MessageSchemaError, match="required field 'seed' is missing"):
        m.TrainInstruction.from_config(raw)


def test_config_round_trip_keeps_enums_and_optionals() -> None:
    reply = _train_reply(claim=None, accountant="rdp")
    back = m.TrainReply.from_config(reply.to_config())
    assert back == reply
    assert "claim" not in reply.to_config()
    status = m.StatusReply(
        site_id="hospital-b", accepted_tasks=("dpgan", "synthesize"), max_epsilon=8.0, delta=1e-5,
        unit=PrivacyUnit.IMAGE, min_patients=3, min_k=5, ksalsa_groups="nearest", epsilon_spent=0.0, num_patients=6, agent_version="0.1.0",
    )
    assert m.StatusReply.from_config(status.to_config()) == status
    with pytest.raises(MessageSchemaError, match="unknown task"):
        dataclasses.replace(status, accepted_tasks=("export-raw",))
    with pytest.raises(MessageSchemaError, match="ksalsa_groups must be one of"):
        dataclasses.replace(status, ksalsa_groups="kmeans")
    with pytest.raises(MessageSchemaError, match="min_k must be >= 2"):
        dataclasses.replace(status, min_k=1)


def test_flower_round_trip_carries_arrays_and_metrics() -> None:
    weights = {"generator.w": np.arange(6, dtype=np.float32).reshape(2, 3), "critic.b": np.zeros(3, np.float32)}
    env = m.Envelope(_train_reply(), weights, {"loss.critic": 0.25})
    content = m.to_recorddict(env)
    assert content.metric_records["metrics"]["num-examples"] == 6  # what Flower strategies read
    back = m.from_recorddict(content, expect=(m.TrainReply,))
    assert back.message == env.message
    assert back.metrics == {"loss.critic": 0.25}
    assert set(back.arrays) == set(weights)
    np.testing.assert_array_equal(back.arrays["generator.w"], weights["generator.w"])


def test_flower_decode_rejects_foreign_content() -> None:
    from flwr.app import ConfigRecord, RecordDict

    content = m.to_recorddict(m.Envelope(_instruction()))
    with pytest.raises(MessageSchemaError, match="expected one of"):
        m.from_recorddict(content, expect=(m.TrainReply,))
    content["raw"] = ConfigRecord({"x": 1})
    with pytest.raises(MessageSchemaError, match="unknown record 'raw'"):
        m.from_recorddict(content)
    old = RecordDict({"header": ConfigRecord({"schema": m.SCHEMA_NAME, "schema-version": 1, "kind": "refusal"}),
                      "body": ConfigRecord({})})  # an agent from before the claims-recovery fields
    with pytest.raises(MessageSchemaError, match="version 1; upgrade the older side"):
        m.from_recorddict(old)
    with pytest.raises(MessageSchemaError, match="not an anonfed message"):
        m.from_recorddict(RecordDict({"body": ConfigRecord({})}))


def test_envelope_rejects_bad_metrics_and_object_arrays() -> None:
    with pytest.raises(MessageSchemaError, match="finite number"):
        m.Envelope(_instruction(), {}, {"loss": True})
    with pytest.raises(MessageSchemaError, match="lowercase identifier"):
        m.Envelope(_instruction(), {}, {"/home/x": 1.0})
    with pytest.raises(MessageSchemaError, match="dtype object"):
        m.Envelope(_instruction(), {"a": np.array([{"k": 1}], dtype=object)}, {})


def test_canonical_hashes_are_order_and_endianness_independent() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert m.array_sha256(a) == m.array_sha256(a.astype(">f4"))
    assert m.array_sha256(a) == m.array_sha256(np.asfortranarray(a))
    assert m.array_sha256(a) != m.array_sha256(a.T)
    w1 = {"x": a, "y": a + 1}
    w2 = {"y": a + 1, "x": a}
    assert m.weights_sha256(w1) == m.weights_sha256(w2)
    w3 = {"x": a.copy(), "y": a + 1}
    w3["x"][0, 0] = 1e-7
    assert m.weights_sha256(w1) != m.weights_sha256(w3)
    scalar = np.float32(0.5).reshape(())  # StyleGAN has 0-d parameters; the shape is part of the hash
    assert m.array_sha256(scalar) != m.array_sha256(scalar.reshape(1))
    assert m.array_sha256(scalar.astype(">f4")) == m.array_sha256(scalar)


def test_weights_layout_mismatch_names_what_does_not_fit() -> None:
    reference = {"critic.w": np.zeros((2, 3), np.float32), "generator.b": np.zeros(4, np.float32)}
    assert m.weights_layout_mismatch({k: v + 1 for k, v in reference.items()}, reference) is None
    cases = {
        "missing \\['generator.b'\\]": {"critic.w": reference["critic.w"]},
        "unexpected \\['x'\\]": {**reference, "x": np.zeros(1)},
        "critic.w has shape \\(3, 2\\)": {**reference, "critic.w": np.zeros((3, 2))},
        "generator.b holds NaN": {**reference, "generator.b": np.array([0, np.nan, 0, 0])},
        "critic.w holds NaN or infinity": {**reference, "critic.w": np.full((2, 3), np.inf)},
    }
    for pattern, weights in cases.items():
        problem = m.weights_layout_mismatch(weights, reference)
        assert problem is not None and re.search(pattern, problem), (pattern, problem)


def test_prior_claims_and_claims_held_travel_and_are_bounded() -> None:
    ins = _instruction(ledger_claims_held=3)
    assert m.from_recorddict(m.to_recorddict(m.Envelope(ins))).message == ins
    assert "ledger_claims_held" not in _instruction().to_config()  # no ledger: nothing to say
    reply = _train_reply(prior_claims=(b"resent", b"catch-up"))
    back = m.from_recorddict(m.to_recorddict(m.Envelope(reply, {"w": np.zeros(2, np.float32)})), expect=(m.TrainReply,))
    assert back.message.prior_claims == (b"resent", b"catch-up")
    with pytest.raises(MessageSchemaError, match="ledger_claims_held must be >= 0"):
        _instruction(ledger_claims_held=-1)
    with pytest.raises(MessageSchemaError, match="prior_claims need the reply's own claim"):
        _train_reply(claim=None, prior_claims=(b"x",))
    with pytest.raises(MessageSchemaError, match="an item of 'prior_claims' holds"):
        _train_reply(prior_claims=(b"x" * (m.MAX_BYTES + 1),))
    with pytest.raises(MessageSchemaError, match="tuple of bytes"):
        _train_reply(prior_claims=("text",))
