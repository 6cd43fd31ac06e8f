"""The coordinator's ledger: append checks, chain, head, reopen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coordinator.ledger import Ledger
from coordinator.ledger.head import head_path_for, read_head
from protocols.errors import AccountingError, BadInputError, ChainError, KAnonymityError, SignatureError
from protocols.ledger import GENESIS, KAnonRelease, LedgerEntry, SignedClaim, make_claim, sign_claim


def _append_all(path: Path, coordinator_key, claims, site_public) -> list[LedgerEntry]:
    with Ledger.open(path, coordinator_key) as ledger:
        return [ledger.append_site_claim(c, site_public[c.claim.site]) for c in claims]


def test_append_chains_entries_and_writes_signed_head(tmp_path, coordinator_key, claims, site_public) -> None:
    path = tmp_path / "ledger.jsonl"
    entries = _append_all(path, coordinator_key, claims, site_public)
    assert [e.seq for e in entries] == list(range(len(claims)))
    assert entries[0].prev == GENESIS
    for a, b in zip(entries, entries[1:]):
        assert b.prev == a.entry_hash
    lines = path.read_bytes().split(b"\n")[:-1]
    assert [LedgerEntry.from_line(x) for x in lines] == entries
    head = read_head(head_path_for(path))
    assert head is not None and head.count == len(entries) and head.last_hash == entries[-1].entry_hash
    head.verify(coordinator_key.public)


def test_reopen_continues_the_chain(tmp_path, coordinator_key, claims, site_public) -> None:
    path = tmp_path / "ledger.jsonl"
    _append_all(path, coordinator_key, claims[:3], site_public)
    with Ledger.open(path, coordinator_key) as ledger:
        assert len(ledger) == 3
        entry = ledger.append_site_claim(claims[3], site_public[claims[3].claim.site])
    assert entry.seq == 3


def test_second_writer_is_refused(tmp_path, coordinator_key) -> None:
    path = tmp_path / "ledger.jsonl"
    with Ledger.open(path, coordinator_key):
        with pytest.raises(BadInputError, match="locked by another process"):
            Ledger.open(path, coordinator_key)


def test_claim_signed_by_another_site_is_refused(tmp_path, coordinator_key, claims, site_keys, site_public) -> None:
    claim = claims[0].claim  # hospital-a's claim
    forged = SignedClaim(claim, site_keys["hospital-b"].sign(domain=b"anonfed/site-claim/v1", payload=claim.canonical))
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        with pytest.raises(SignatureError, match="does not verify"):
            ledger.append_site_claim(forged, site_public["hospital-a"])
        with pytest.raises(SignatureError, match="names key"):
            ledger.append_site_claim(claims[0], site_public["hospital-b"])
        assert len(ledger) == 0


def test_resent_claim_is_recorded_once(tmp_path, coordinator_key, claims, site_public) -> None:
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        first = ledger.append_site_claim(claims[0], site_public["hospital-a"])
        assert ledger.append_site_claim(claims[0], site_public["hospital-a"]) == first
        assert len(ledger) == 1 and ledger.find_claim("hospital-a", 0) == first


def test_other_claim_under_a_recorded_number_is_refused(tmp_path, coordinator_key, claims, site_keys, site_public) -> None:
    equivocation = _resign(claims[0], site_keys["hospital-a"], round=7)
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        ledger.append_site_claim(claims[0], site_public["hospital-a"])
        with pytest.raises(ChainError, match="replayed or duplicated"):
            ledger.append_site_claim(equivocation, site_public["hospital-a"])
        assert len(ledger) == 1


def test_missing_claim_is_refused(tmp_path, coordinator_key, claims, site_public) -> None:
    a_claims = [c for c in claims if c.claim.site == "hospital-a"]
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        ledger.append_site_claim(a_claims[0], site_public["hospital-a"])
        with pytest.raises(ChainError, match=r"claims 1\.\.1 of this site are missing"):
            ledger.append_site_claim(a_claims[2], site_public["hospital-a"])


def _resign(signed: SignedClaim, key, **changes) -> SignedClaim:
    claim = dataclasses.replace(signed.claim, **changes)
    return sign_claim(claim, key)


def test_decreasing_cumulative_epsilon_is_refused(tmp_path, coordinator_key, claims, site_keys, site_public) -> None:
    a = [c for c in claims if c.claim.site == "hospital-a"]
    bad = _resign(a[1], site_keys["hospital-a"], cumulative_epsilon=a[0].claim.cumulative_epsilon / 2, epsilon=0.0)
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        ledger.append_site_claim(a[0], site_public["hospital-a"])
        with pytest.raises(AccountingError, match="cumulative epsilon decreased"):
            ledger.append_site_claim(bad, site_public["hospital-a"])


def test_under_reported_epsilon_is_refused(tmp_path, coordinator_key, claims, site_keys, site_public) -> None:
    a0 = claims[0]
    low = a0.claim.cumulative_epsilon * 0.5
    bad = _resign(a0, site_keys["hospital-a"], cumulative_epsilon=low, epsilon=low)
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        with pytest.raises(AccountingError, match="under-reported"):
            ledger.append_site_claim(bad, site_public["hospital-a"])


def test_k_below_minimum_is_refused(tmp_path, coordinator_key, claims, site_keys, site_public) -> None:
    k_claim = next(c for c in claims if c.claim.kanon is not None and c.claim.site == "hospital-a")
    before = [c for c in claims if c.claim.site == "hospital-a" and c.claim.site_seq < k_claim.claim.site_seq]
    bad = _resign(k_claim, site_keys["hospital-a"], kanon=KAnonRelease(3, 5, (3, 4)))
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        for c in before:
            ledger.append_site_claim(c, site_public["hospital-a"])
        with pytest.raises(KAnonymityError, match="below the recorded minimum"):
            ledger.append_site_claim(bad, site_public["hospital-a"])
        small = _resign(k_claim, site_keys["hospital-a"], kanon=KAnonRelease(5, 5, (5, 4)))
        with pytest.raises(KAnonymityError, match="fewer than k = 5 distinct patients"):
            ledger.append_site_claim(small, site_public["hospital-a"])
        ledger.append_site_claim(k_claim, site_public["hospital-a"])


def test_edited_file_is_not_extended(tmp_path, coordinator_key, claims, site_public) -> None:
    path = tmp_path / "ledger.jsonl"
    _append_all(path, coordinator_key, claims[:3], site_public)
    lines = path.read_bytes().split(b"\n")
    lines[0], lines[1] = lines[1], lines[0]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ChainError, match="entry 0 .* breaks the chain"):
        Ledger.open(path, coordinator_key)


def test_transport_as_text_round_trips(claims) -> None:
    text = claims[0].to_bytes().decode("utf-8")
    assert SignedClaim.from_bytes(text) == claims[0]


def test_dp_claim_after_a_non_dp_release_is_refused(tmp_path, coordinator_key, site_keys, site_public) -> None:
    import math

    from protocols.ledger import DpSgdMechanism, MechanismKind, PlainMechanism
    from protocols.tasks import PrivacyUnit, Task

    key = site_keys["hospital-a"]
    nodp = make_claim(run_id="r", round=0, site="hospital-a", site_seq=0, site_prev=GENESIS, key_id=key.key_id,
                      task=Task.GAN_NODP, dataset="tof", mechanism=PlainMechanism(MechanismKind.NONE),
                      epsilon=math.inf, cumulative_epsilon=math.inf)
    dp = make_claim(run_id="r", round=1, site="hospital-a", site_seq=1, site_prev=nodp.claim_hash, key_id=key.key_id,
                    task=Task.DPGAN, dataset="tof",
                    mechanism=DpSgdMechanism(1.1, 0.05, 30, 1.0, 1e-5, PrivacyUnit.PATIENT, "opacus-rdp"),
                    epsilon=2.0, cumulative_epsilon=2.0)
    with Ledger.open(tmp_path / "l.jsonl", coordinator_key) as ledger:
        ledger.append_site_claim(sign_claim(nodp, key), site_public["hospital-a"])
        with pytest.raises(AccountingError, match="already released WITHOUT differential privacy"):
            ledger.append_site_claim(sign_claim(dp, key), site_public["hospital-a"])


def test_ledger_of_another_coordinator_is_not_extended(tmp_path, coordinator_key, claims, site_public) -> None:
    from protocols.signing import SigningKey

    path = tmp_path / "ledger.jsonl"
    _append_all(path, coordinator_key, claims[:2], site_public)
    with pytest.raises(SignatureError, match="entry 0 was countersigned by key"):
        Ledger.open(path, SigningKey.generate())
