"""Epsilon matches Opacus' own accountants; calibration never overshoots the target."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from agent.dp.accounting import AccountantKind, calibrate_noise_multiplier, epsilon_of
from protocols.errors import BadInputError

HISTORY = [(1.1, 0.05, 30), (0.9, 0.1, 20), (1.1, 0.05, 10)]


def _opacus_stepped(acc, history):
    for sigma, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc


def test_rdp_epsilon_matches_opacus_stepping_one_step_at_a_time() -> None:
    want = _opacus_stepped(RDPAccountant(), HISTORY).get_epsilon(delta=1e-5)
    assert epsilon_of(HISTORY, delta=1e-5, kind=AccountantKind.RDP) == pytest.approx(want, rel=1e-12)


def test_prv_epsilon_matches_opacus_stepping_one_step_at_a_time() -> None:
    want = _opacus_stepped(PRVAccountant(), HISTORY).get_epsilon(delta=1e-5)
    assert epsilon_of(HISTORY, delta=1e-5, kind=AccountantKind.PRV) == pytest.approx(want, rel=1e-9)


def test_prv_is_tighter_than_rdp_here() -> None:
    assert epsilon_of(HISTORY, delta=1e-5, kind=AccountantKind.PRV) < epsilon_of(HISTORY, delta=1e-5, kind=AccountantKind.RDP)


def test_zero_noise_means_infinite_epsilon_and_empty_history_zero() -> None:
    assert math.isinf(epsilon_of([(0.0, 1.0, 5)], delta=1e-5, kind=AccountantKind.PRV))
    assert epsilon_of([], delta=1e-5, kind=AccountantKind.PRV) == 0.0


@settings(max_examples=5, deadline=None)
@given(
    target=st.floats(0.5, 16.0),
    q=st.floats(0.01, 0.3),
    steps=st.integers(1, 300),
)
def test_calibrated_noise_never_overshoots_the_target(target: float, q: float, steps: int) -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, kind=AccountantKind.RDP)
    eps = epsilon_of([(sigma, q, steps)], delta=1e-5, kind=AccountantKind.RDP)
    assert eps <= target
    # and it is not wastefully large: 2 % less noise would overshoot
    assert epsilon_of([(sigma * 0.98, q, steps)], delta=1e-5, kind=AccountantKind.RDP) > target * 0.999 or sigma < 0.1


def test_prv_calibration_is_safe_and_needs_less_noise_than_rdp() -> None:
    kw = dict(target_epsilon=6.0, delta=1e-5, sample_rate=0.2, steps=60)
    prv = calibrate_noise_multiplier(kind=AccountantKind.PRV, **kw)
    rdp = calibrate_noise_multiplier(kind=AccountantKind.RDP, **kw)
    assert prv < rdp
    assert epsilon_of([(prv, 0.2, 60)], delta=1e-5, kind=AccountantKind.PRV) <= 6.0


def test_calibration_accounts_for_prior_history() -> None:
    alone = calibrate_noise_multiplier(target_epsilon=4, delta=1e-5, sample_rate=0.1, steps=100, kind=AccountantKind.RDP)
    after = calibrate_noise_multiplier(
        target_epsilon=4, delta=1e-5, sample_rate=0.1, steps=100, kind=AccountantKind.RDP, prior_history=[(3.0, 0.1, 100)]
    )
    assert after > alone
    assert epsilon_of([(3.0, 0.1, 100), (after, 0.1, 100)], delta=1e-5, kind=AccountantKind.RDP) <= 4


def test_target_already_spent_by_prior_history_is_refused() -> None:
    with pytest.raises(BadInputError, match="cannot be met"):
        calibrate_noise_multiplier(
            target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=10, kind=AccountantKind.RDP, prior_history=[(0.3, 1.0, 50)]
        )


def test_malformed_history_is_refused() -> None:
    with pytest.raises(BadInputError, match="sample_rate"):
        epsilon_of([(1.0, 1.5, 3)], delta=1e-5, kind=AccountantKind.RDP)
