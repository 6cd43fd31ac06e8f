"""The auditor's epsilon recomputation and its tolerance rule."""

from __future__ import annotations

import math

import pytest

from coordinator.audit.recompute import ORDERS, EpsilonRecomputer


@pytest.fixture(scope="module")
def rec() -> EpsilonRecomputer:
    return EpsilonRecomputer()


def test_cached_unit_rdp_matches_dp_accounting_composition(rec) -> None:
    # Guards the use of dp-accounting's private ``_rdp`` vector against library upgrades.
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.rdp import RdpAccountant

    h = rec.extend(EpsilonRecomputer.EMPTY, sample_rate=0.05, noise_multiplier=1.1, steps=40)
    h = rec.extend(h, sample_rate=0.02, noise_multiplier=0.9, steps=25)
    acc = RdpAccountant(orders=ORDERS)
    acc.compose(PoissonSampledDpEvent(0.05, GaussianDpEvent(1.1)), 40)
    acc.compose(PoissonSampledDpEvent(0.02, GaussianDpEvent(0.9)), 25)
    assert rec.rdp_epsilon(h, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert rec.segments(h) == [(0.05, 1.1, 40), (0.02, 0.9, 25)]


def test_equal_histories_share_one_handle(rec) -> None:
    a = rec.extend(EpsilonRecomputer.EMPTY, sample_rate=0.05, noise_multiplier=1.1, steps=40)
    b = rec.extend(EpsilonRecomputer.EMPTY, sample_rate=0.05, noise_multiplier=1.1, steps=40)
    assert a == b and rec.extend(a, sample_rate=0.05, noise_multiplier=1.1, steps=1) != a


def test_tolerance_rule(rec) -> None:
    h = rec.extend(EpsilonRecomputer.EMPTY, sample_rate=0.05, noise_multiplier=1.1, steps=40)
    rdp = rec.rdp_epsilon(h, 1e-5)
    assert rec.check(rdp, h, 1e-5).rule == "matches RDP"
    over = rec.check(rdp * 1.01, h, 1e-5)
    assert not over.ok and "exceeds the RDP upper bound" in over.rule
    pld = rec.pld_epsilon(h, 1e-5)
    assert pld < rdp  # PLD is the tighter analysis
    near = rec.check(pld * 1.001, h, 1e-5)
    assert near.ok and near.rule == "within PLD tolerance"
    under = rec.check(pld * 0.9, h, 1e-5)
    assert not under.ok and "under-reported" in under.rule
    assert not rec.check(math.inf, h, 1e-5).ok
    assert rec.check(0.0, EpsilonRecomputer.EMPTY, 1e-5).ok


def test_vectorised_conversion_equals_dp_accounting(rec) -> None:
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    from coordinator.audit.recompute import _rdp_to_epsilon

    h = EpsilonRecomputer.EMPTY
    for q, sigma, steps in [(0.01, 1.0, 1), (0.05, 1.1, 40), (0.1, 0.8, 500), (0.25, 2.0, 100), (1.0, 0.5, 3)]:
        h = rec.extend(h, sample_rate=q, noise_multiplier=sigma, steps=steps)
        for delta in (1e-3, 1e-5, 1e-9):
            expected = compute_epsilon(ORDERS, rec._rdp[h], delta)[0]
            assert _rdp_to_epsilon(rec._rdp[h], delta) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    tiny = rec.extend(EpsilonRecomputer.EMPTY, sample_rate=1e-6, noise_multiplier=50.0, steps=1)
    assert _rdp_to_epsilon(rec._rdp[tiny], 0.5) == compute_epsilon(ORDERS, rec._rdp[tiny], 0.5)[0] == 0
