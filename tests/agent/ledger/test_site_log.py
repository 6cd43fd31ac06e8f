"""The site's own claim log and its comparison with the coordinator's ledger."""

from __future__ import annotations

import dataclasses

import pytest

from agent.ledger import DiscrepancyKind, SiteClaimLog, compare_with_ledger, read_ledger_entries, sign_claim
from coordinator.ledger import Ledger
from protocols.errors import ChainError
from protocols.ledger import DpSgdMechanism, GENESIS
from protocols.signing import SigningKey
from protocols.tasks import PrivacyUnit, Task


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _claim(log: SiteClaimLog, key: SigningKey, round_: int, cum: float, prev_cum: float):
    return log.new_claim(
        run_id="run-1", round=round_, site="hospital-a", key_id=key.key_id, task=Task.DPGAN, dataset="tof",
        mechanism=DpSgdMechanism(1.1, 0.05, 30, 1.0, 1e-5, PrivacyUnit.PATIENT, "opacus-rdp"),
        epsilon=cum - prev_cum, cumulative_epsilon=cum,
    )


def _eps(n: int) -> float:
    from coordinator.audit.recompute import EpsilonRecomputer

    rec = EpsilonRecomputer()
    h = EpsilonRecomputer.EMPTY
    for _ in range(n):
        h = rec.extend(h, sample_rate=0.05, noise_multiplier=1.1, steps=30)
    return rec.rdp_epsilon(h, 1e-5)


def _record(log: SiteClaimLog, key: SigningKey, n: int) -> None:
    for r in range(n):
        log.record(sign_claim(_claim(log, key, r, _eps(r + 1), _eps(r)), key))


def test_log_chains_claims_and_survives_reopen(tmp_path, key) -> None:
    path = tmp_path / "claims.jsonl"
    log = SiteClaimLog(path)
    _record(log, key, 3)
    again = SiteClaimLog(path)
    assert again.claims() == log.claims()
    assert again.next_seq == 3 and again.claims()[0].claim.site_prev == GENESIS
    assert again.claims()[2].claim.site_prev == again.claims()[1].claim.claim_hash
    assert [c.claim.site_seq for c in again.since(1)] == [1, 2]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_claim_out_of_order_is_refused(tmp_path, key) -> None:
    log = SiteClaimLog(tmp_path / "claims.jsonl")
    claim = _claim(log, key, 0, _eps(1), 0.0)
    log.record(sign_claim(claim, key))
    with pytest.raises(ChainError, match="does not continue the site claim log"):
        log.record(sign_claim(claim, key))


def test_torn_tail_is_ignored_then_removed(tmp_path, key) -> None:
    path = tmp_path / "claims.jsonl"
    log = SiteClaimLog(path)
    _record(log, key, 2)
    data = path.read_bytes()
    path.write_bytes(data + data[:50])  # a crash in the middle of writing the third claim
    log = SiteClaimLog(path)
    assert log.next_seq == 2
    log.record(sign_claim(_claim(log, key, 2, _eps(3), _eps(2)), key))
    assert len(SiteClaimLog(path).claims()) == 3


def test_comparison_finds_omission_and_alteration(tmp_path, key) -> None:
    log = SiteClaimLog(tmp_path / "claims.jsonl")
    _record(log, key, 3)
    ckey = SigningKey.generate()
    lpath = tmp_path / "ledger.jsonl"
    with Ledger.open(lpath, ckey) as ledger:
        for c in log.claims()[:2]:
            ledger.append_site_claim(c, key.public)
    entries = read_ledger_entries(lpath)
    assert compare_with_ledger(log.claims()[:2], entries, site="hospital-a") == []
    found = compare_with_ledger(log.claims(), entries, site="hospital-a")
    assert [(d.kind, d.site_seq) for d in found] == [(DiscrepancyKind.OMITTED, 2)]
    altered = dataclasses.replace(entries[1], signed=dataclasses.replace(entries[1].signed, signature=entries[0].signed.signature))
    found = compare_with_ledger(log.claims()[:2], [entries[0], altered], site="hospital-a")
    assert [(d.kind, d.site_seq, d.ledger_seq) for d in found] == [(DiscrepancyKind.ALTERED, 1, 1)]


def test_claim_built_on_a_stale_view_is_refused_not_overwriting(tmp_path, key) -> None:
    path = tmp_path / "claims.jsonl"
    first, second = SiteClaimLog(path), SiteClaimLog(path)  # two agent processes
    stale = _claim(second, key, 0, _eps(1), 0.0)
    first.record(sign_claim(_claim(first, key, 0, _eps(1), 0.0), key))
    with pytest.raises(ChainError, match="does not continue the site claim log"):
        second.record(sign_claim(stale, key))
    second.record(sign_claim(_claim(second, key, 1, _eps(2), _eps(1)), key))  # rebuilt on the fresh view
    assert [c.claim.site_seq for c in SiteClaimLog(path).claims()] == [0, 1]
