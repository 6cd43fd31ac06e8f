"""Ledger record schema: strict fields, kind rules, infinity, signatures, canonical slices."""

from __future__ import annotations

import dataclasses
import math

import pytest

from protocols.canonical import decode, encode
from protocols.errors import BadInputError, SignatureError
from protocols.ledger import (
    CLAIM_SCHEMA, GENESIS, Artifact, ArtifactKind, DpSgdMechanism, KAnonRelease, LedgerEntry, MechanismKind, PlainMechanism,
    SignedClaim, SiteClaim, countersign, make_claim, sign_claim, verify_countersignature,
)
from protocols.signing import SigningKey
from protocols.tasks import PrivacyUnit, Task

KEY = SigningKey.generate()
COORD = SigningKey.generate()
DP = DpSgdMechanism(1.1, 0.05, 30, 1.0, 1e-5, PrivacyUnit.PATIENT, "opacus-prv")


def _claim(**changes) -> SiteClaim:
    fields = dict(
        run_id="run-1", round=0, site="hospital-a", site_seq=0, site_prev=GENESIS, key_id=KEY.key_id, task=Task.DPGAN,
        dataset="tof", mechanism=DP, epsilon=1.5, cumulative_epsilon=1.5,
        artifacts=(Artifact("generator.safetensors", ArtifactKind.WEIGHTS, "ab" * 32, 123),),
    )
    fields.update(changes)
    return make_claim(**fields)


def test_claim_round_trips_through_canonical_bytes() -> None:
    claim = _claim()
    signed = sign_claim(claim, KEY)
    back = SignedClaim.from_bytes(signed.to_bytes())
    assert back == signed and back.claim.canonical == claim.canonical
    back.verify(KEY.public)
    assert decode(claim.canonical)["schema"] == CLAIM_SCHEMA == 2


def test_a_schema_1_claim_still_reads_and_verifies_byte_for_byte() -> None:
    # Ledgers written before claim schema 2 must keep verifying: the claim re-encodes to exactly
    # the bytes its site signed (no start_weights_sha256 key), inside a countersigned entry too.
    old = dataclasses.replace(_claim(), schema=1)
    d = decode(old.canonical)
    assert d["schema"] == 1 and "start_weights_sha256" not in d
    signed = sign_claim(old, KEY)
    entry = countersign(signed, seq=0, prev=GENESIS, key=COORD)
    parsed = LedgerEntry.from_line(entry.line)
    assert parsed.claim == old and parsed.claim.start_weights_sha256 is None
    assert parsed.claim.canonical == old.canonical
    parsed.signed.verify(KEY.public)
    verify_countersignature(parsed, COORD.public)
    with pytest.raises(BadInputError, match="not part of claim schema 1"):
        dataclasses.replace(old, start_weights_sha256="cd" * 32)
    d.update(start_weights_sha256=None)
    with pytest.raises(BadInputError, match=r"unknown fields \['start_weights_sha256'\]"):
        SiteClaim.from_dict(d)


def test_start_weights_digest_is_signed_and_only_on_training_claims() -> None:
    claim = _claim(start_weights_sha256="cd" * 32)
    signed = sign_claim(claim, KEY)
    back = SignedClaim.from_bytes(signed.to_bytes())
    assert back.claim.start_weights_sha256 == "cd" * 32
    forged = dataclasses.replace(back, claim=dataclasses.replace(back.claim, start_weights_sha256="ef" * 32))
    with pytest.raises(SignatureError):
        forged.verify(KEY.public)
    assert decode(_claim().canonical)["start_weights_sha256"] is None  # present, null: the site initialised
    with pytest.raises(BadInputError, match="only a training"):
        _claim(task=Task.SYNTHESIZE, mechanism=PlainMechanism(MechanismKind.POST_PROCESSING), epsilon=0.0,
               start_weights_sha256="cd" * 32)


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (lambda d: d.update(extra=1), r"unknown fields \['extra'\]"),
        (lambda d: d.pop("dataset"), r"missing fields \['dataset'\]"),
        (lambda d: d["mechanism"].update(noise_multiplier=1), "mechanism.noise_multiplier: expected a float"),
        (lambda d: d.update(round=True), "claim.round: expected an integer"),
        (lambda d: d.update(schema=3), r"claim schemas \[1, 2\], got 3"),
        (lambda d: d.update(schema=True), r"claim schemas \[1, 2\], got True"),
        (lambda d: d.pop("start_weights_sha256"), r"missing fields \['start_weights_sha256'\]"),
        (lambda d: d.update(start_weights_sha256="XYZ"), "start_weights_sha256: expected 64 lowercase hex"),
        (lambda d: d.update(task="mine-bitcoin"), "unknown task"),
        (lambda d: d.update(task=["dpgan"]), "unknown task"),
        (lambda d: d["artifacts"][0].update(kind="model"), "unknown kind"),
        (lambda d: d["artifacts"][0].update(kind={"weights": 1}), "unknown kind"),
        (lambda d: d.update(epsilon=float("nan")), "claim.epsilon"),
        (lambda d: d.update(kanon=[]), "kanon: expected an object"),
        (lambda d: d["mechanism"].update(unit="hospital"), "mechanism.unit"),
        (lambda d: d.update(site="Hospital A"), "claim.site"),
        (lambda d: d.update(epsilon=-1.0), "claim.epsilon"),
        (lambda d: d["artifacts"][0].update(sha256="XYZ"), "64 lowercase hex digits"),
    ],
)
def test_claim_fields_are_strict(edit, rule: str) -> None:
    d = _claim().to_dict()
    edit(d)
    with pytest.raises(BadInputError, match=rule):
        SiteClaim.from_dict(d)


def test_a_claim_that_is_not_an_object_says_so() -> None:
    with pytest.raises(BadInputError, match="claim: expected an object, got list"):
        SiteClaim.from_dict([_claim().to_dict()])


def test_non_dp_release_is_infinite_and_spelled_inf() -> None:
    claim = _claim(task=Task.GAN_NODP, mechanism=PlainMechanism(MechanismKind.NONE), epsilon=math.inf,
                   cumulative_epsilon=math.inf)
    d = decode(claim.canonical)
    assert d["epsilon"] == "inf" and d["cumulative_epsilon"] == "inf"
    assert SiteClaim.from_dict(d).epsilon == math.inf
    with pytest.raises(BadInputError, match="must record epsilon = cumulative_epsilon = inf"):
        _claim(task=Task.GAN_NODP, mechanism=PlainMechanism(MechanismKind.NONE), epsilon=0.0, cumulative_epsilon=0.0)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        (dict(task=Task.KSALSA), "dp-sgd needs task"),
        (dict(epsilon=math.inf), "finite 0 <= epsilon <= cumulative_epsilon"),
        (dict(epsilon=2.0, cumulative_epsilon=1.0), "finite 0 <= epsilon <= cumulative_epsilon"),
        (dict(task=Task.KSALSA, mechanism=PlainMechanism(MechanismKind.K_ANONYMITY), epsilon=0.0), "needs task ksalsa and a kanon"),
        (dict(task=Task.KSALSA, mechanism=PlainMechanism(MechanismKind.K_ANONYMITY), epsilon=0.3,
              kanon=KAnonRelease(5, 5, (5,))), "adds no DP cost"),
        (dict(kanon=KAnonRelease(5, 5, (5,))), "kanon record is only allowed with mechanism k-anonymity"),
    ],
)
def test_mechanism_task_and_epsilon_must_fit(changes, rule: str) -> None:
    with pytest.raises(BadInputError, match=rule):
        _claim(**changes)


def test_signing_with_a_key_other_than_the_named_one_is_refused() -> None:
    with pytest.raises(SignatureError, match="is being signed with key"):
        sign_claim(_claim(), SigningKey.generate())


def test_entry_slices_equal_fresh_encodings() -> None:
    signed = sign_claim(_claim(kanon=None), KEY)
    entry = countersign(signed, seq=0, prev=GENESIS, key=COORD)
    parsed = LedgerEntry.from_line(entry.line)
    # from_line slices the claim and the countersigned bytes out of the line: they must be exactly
    # what encoding the parsed objects gives.
    assert parsed.claim.canonical == encode(parsed.claim.to_dict()) == signed.claim.canonical
    assert parsed.unsigned_bytes == encode(parsed.unsigned_dict())
    assert parsed == entry and parsed.entry_hash == entry.entry_hash
    verify_countersignature(parsed, COORD.public)
    tampered = dataclasses.replace(parsed, seq=1)
    with pytest.raises(SignatureError, match="countersignature of entry 1 does not verify"):
        verify_countersignature(tampered, COORD.public)


def test_entry_line_must_be_canonical() -> None:
    entry = countersign(sign_claim(_claim(), KEY), seq=0, prev=GENESIS, key=COORD)
    with pytest.raises(BadInputError, match="not the canonical encoding"):
        LedgerEntry.from_line(entry.line.replace(b'"seq":0', b'"seq": 0'))
