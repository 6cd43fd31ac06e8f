"""Per-site budgets: fed by each site's own reports, never decreasing, scheduling stops at the limit."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.budget import ConsortiumBudget
from protocols.errors import AccountingError


def test_limit_is_the_stricter_of_consortium_and_site(tmp_path) -> None:
    b = ConsortiumBudget(5.0, path=tmp_path / "budget.json")
    assert b.register("hospital-a", site_max_epsilon=3.0).limit == 3.0
    assert b.register("hospital-b", site_max_epsilon=9.0).limit == 5.0
    saved = json.loads((tmp_path / "budget.json").read_text())
    assert saved["sites"]["hospital-a"]["limit"] == 3.0


def test_site_is_not_scheduled_when_its_next_round_would_pass_the_limit() -> None:
    b = ConsortiumBudget(4.0)
    b.register("hospital-a")
    assert b.schedulable("hospital-a")[0]
    b.record_spend("hospital-a", epsilon_round=1.5, epsilon_cumulative=1.5)
    b.record_spend("hospital-a", epsilon_round=1.2, epsilon_cumulative=2.7)
    assert b.schedulable("hospital-a")[0]  # 2.7 + 1.2 <= 4
    b.record_spend("hospital-a", epsilon_round=1.0, epsilon_cumulative=3.7)
    ok, why = b.schedulable("hospital-a")
    assert not ok and "would pass the limit 4" in why


def test_sites_own_projection_decides_when_given() -> None:
    b = ConsortiumBudget(8.0)
    b.register("hospital-a")
    # a calibrated plan: round 1 alone costs 5.8, but two rounds together land on 7.9
    b.record_spend("hospital-a", epsilon_round=5.8, epsilon_cumulative=5.8, epsilon_next=7.9)
    assert b.schedulable("hospital-a") == (True, "")
    b.record_spend("hospital-a", epsilon_round=5.8, epsilon_cumulative=7.9, epsilon_next=9.4)
    ok, why = b.schedulable("hospital-a")
    assert not ok and "9.4, past the limit 8" in why


def test_site_already_spent_is_exhausted_at_registration() -> None:
    b = ConsortiumBudget(4.0)
    b.register("hospital-a", spent=4.0)
    assert b.schedulable("hospital-a") == (False, "spent 4 of 4 before the run")


def test_decreasing_cumulative_epsilon_is_an_accounting_error() -> None:
    b = ConsortiumBudget(10.0)
    b.register("hospital-a")
    b.record_spend("hospital-a", epsilon_round=2.0, epsilon_cumulative=2.0)
    with pytest.raises(AccountingError, match="can never decrease"):
        b.record_spend("hospital-a", epsilon_round=0.5, epsilon_cumulative=1.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 3.0), min_size=1, max_size=12), st.floats(0.5, 10.0))
def test_decreasing_round_costs_never_pass_the_limit(costs, limit) -> None:
    """If each round costs no more than the one before (DP-SGD composition), scheduling stays within the limit."""
    costs = sorted(costs, reverse=True)
    b = ConsortiumBudget(limit)
    b.register("s1")
    spent = 0.0
    for c in costs:
        if not b.schedulable("s1")[0]:
            break
        if spent + c > limit:  # the site itself refuses (its own accountant); the coordinator records that
            b.mark_exhausted("s1", "refused")
            break
        spent += c
        b.record_spend("s1", epsilon_round=c, epsilon_cumulative=spent)
    assert b.sites["s1"].spent <= limit + 1e-9
    assert b.consortium_epsilon() == pytest.approx(spent)
