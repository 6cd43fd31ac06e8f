"""FedAvg weights by patients and refuses mismatched updates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.strategy import fedavg
from protocols.errors import BadInputError


def test_weighted_by_number_of_patients() -> None:
    a = {"generator.w": np.zeros((2, 2), np.float32), "critic.b": np.zeros(3, np.float32)}
    b = {"generator.w": np.ones((2, 2), np.float32), "critic.b": np.full(3, 4.0, np.float32)}
    out = fedavg([(a, 1), (b, 3)])
    np.testing.assert_allclose(out["generator.w"], 0.75)
    np.testing.assert_allclose(out["critic.b"], 3.0)
    assert out["generator.w"].dtype == np.float32


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10), st.integers(1, 50)), min_size=1, max_size=6))
def test_result_lies_within_the_inputs(pairs) -> None:
    updates = [({"w": np.full(3, v, np.float32)}, n) for v, n in pairs]
    out = fedavg(updates)["w"]
    lo, hi = min(v for v, _ in pairs), max(v for v, _ in pairs)
    assert np.all(out >= np.float32(lo) - 1e-4) and np.all(out <= np.float32(hi) + 1e-4)


def test_mismatched_updates_are_refused() -> None:
    a = {"w": np.zeros(2, np.float32)}
    with pytest.raises(BadInputError, match="names differ"):
        fedavg([(a, 1), ({"v": np.zeros(2, np.float32)}, 1)])
    with pytest.raises(BadInputError, match="shape"):
        fedavg([(a, 1), ({"w": np.zeros(3, np.float32)}, 1)])
    with pytest.raises(BadInputError, match="positive integer"):
        fedavg([(a, 0)])
    with pytest.raises(BadInputError, match="at least one update"):
        fedavg([])
