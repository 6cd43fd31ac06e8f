"""Charged-but-unclaimed DP steps are found, so the ledger stays recomputable after a failed round."""

from __future__ import annotations

import pytest

from agent.ledger.catch_up import Charge, unclaimed_history
from protocols.errors import AccountingError
from protocols.ledger import GENESIS, DpSgdMechanism, make_claim, sign_claim
from protocols.signing import SigningKey
from protocols.tasks import PrivacyUnit, Task

KEY = SigningKey.generate()


def _claims(segments):
    out, prev = [], GENESIS
    for i, (sigma, q, steps) in enumerate(segments):
        claim = make_claim(run_id="r", round=i, site="hospital-a", site_seq=i, site_prev=prev, key_id=KEY.key_id,
                           task=Task.DPGAN, dataset="tof",
                           mechanism=DpSgdMechanism(sigma, q, steps, 1.0, 1e-5, PrivacyUnit.PATIENT, "prv"),
                           epsilon=0.1, cumulative_epsilon=0.1 * (i + 1))
        out.append(sign_claim(claim, KEY))
        prev = claim.claim_hash
    return out


def test_nothing_unclaimed_when_claims_cover_the_history() -> None:
    history = [(1.1, 0.05, 20), (1.1, 0.05, 20), (0.9, 0.1, 10)]
    assert unclaimed_history(history, _claims([(1.1, 0.05, 40), (0.9, 0.1, 10)]), dataset="tof") == []


def test_failed_round_leaves_charged_steps_to_claim() -> None:
    history = [(1.1, 0.05, 40), (1.1, 0.05, 40), (0.0, 1.0, 1), (0.9, 0.1, 10)]
    assert unclaimed_history(history, _claims([(1.1, 0.05, 40)]), dataset="tof") == [Charge(1.1, 0.05, 40), Charge(0.9, 0.1, 10)]
    assert unclaimed_history(history, [], dataset="other") == [Charge(1.1, 0.05, 80), Charge(0.9, 0.1, 10)]


def test_claims_the_accountant_never_charged_are_refused() -> None:
    with pytest.raises(AccountingError, match="did not charge in that order"):
        unclaimed_history([(1.1, 0.05, 40)], _claims([(1.1, 0.05, 50)]), dataset="tof")


def test_catch_up_claims_what_failed_rounds_charged_before_this_round() -> None:
    from agent.ledger.catch_up import catch_up_segments

    # Claimed: 40 steps. Then a round of 20 crashed, one at another noise crashed, and this round ran 20.
    history = [(1.1, 0.05, 40), (1.1, 0.05, 20), (0.9, 0.1, 10), (1.1, 0.05, 20)]
    plan = catch_up_segments(history, _claims([(1.1, 0.05, 40)]), dataset="tof", this_round=(1.1, 0.05, 20))
    assert plan == [(Charge(1.1, 0.05, 20), [(1.1, 0.05, 40), (1.1, 0.05, 20)]),
                    (Charge(0.9, 0.1, 10), [(1.1, 0.05, 40), (1.1, 0.05, 20), (0.9, 0.1, 10)])]
    # A crashed round with this round's mechanism merges with it; only its own steps are caught up.
    merged = catch_up_segments([(1.1, 0.05, 40), (1.1, 0.05, 30), (1.1, 0.05, 20)], _claims([(1.1, 0.05, 40)]),
                               dataset="tof", this_round=(1.1, 0.05, 20))
    assert merged == [(Charge(1.1, 0.05, 30), [(1.1, 0.05, 40), (1.1, 0.05, 30)])]
    assert catch_up_segments([(1.1, 0.05, 40), (1.1, 0.05, 20)], _claims([(1.1, 0.05, 40)]), dataset="tof",
                             this_round=(1.1, 0.05, 20)) == []


def test_catch_up_states_what_each_failed_round_was_charged_with() -> None:
    from agent.ledger.catch_up import catch_up_segments

    # Same noise and rate, but the crashed rounds clipped at 2.0 and 0.5 (patient unit) and this one
    # at 1.0: the claims match on (noise, rate) only, and each catch-up keeps its own terms.
    patient = PrivacyUnit.PATIENT
    history = [Charge(1.1, 0.05, 40, (patient, 1.0)), Charge(1.1, 0.05, 20, (patient, 2.0)),
               Charge(1.1, 0.05, 10, (patient, 0.5)), Charge(1.1, 0.05, 20, (patient, 1.0))]
    plan = catch_up_segments(history, _claims([(1.1, 0.05, 40)]), dataset="tof", this_round=(1.1, 0.05, 20))
    assert [charge for charge, _ in plan] == [Charge(1.1, 0.05, 20, (patient, 2.0)), Charge(1.1, 0.05, 10, (patient, 0.5))]
    assert plan[-1][1] == [(1.1, 0.05, 40), (1.1, 0.05, 20), (1.1, 0.05, 10)]


def test_catch_up_refuses_when_the_accountant_does_not_end_with_this_round() -> None:
    from agent.ledger.catch_up import catch_up_segments

    with pytest.raises(AccountingError, match="does not end with this round's 20 steps"):
        catch_up_segments([(1.1, 0.05, 40), (0.9, 0.1, 10)], _claims([(1.1, 0.05, 40)]), dataset="tof",
                          this_round=(1.1, 0.05, 20))
    with pytest.raises(AccountingError, match="does not end with this round's"):
        catch_up_segments([(1.1, 0.05, 40)], _claims([(1.1, 0.05, 40)]), dataset="tof", this_round=(1.1, 0.05, 20))
