"""Privacy analysis: pure functions from a DP-SGD history to epsilon, and back to a noise multiplier.

A history is a sequence of ``(noise_multiplier, sample_rate, steps)`` triples, the same form
Opacus' accountants keep. The PRV accountant is tighter than RDP but its discretisation can fail
("Discrete mean differs significantly..."); then we fall back to RDP, which is a valid (looser)
upper bound, and say so in the log. Nothing here stores state: see
:mod:`agent.dp.durable_accountant` for persistence.
"""

from __future__ import annotations

import enum
import logging
import math
import warnings
from typing import Sequence

from opacus.accountants import PRVAccountant, RDPAccountant

from protocols.errors import BadInputError

log = logging.getLogger(__name__)

HistoryEntry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)
MAX_NOISE_MULTIPLIER = 1e4
_CALIBRATION_REL_TOL = 2e-3


class AccountantKind(str, enum.Enum):
    """Which analysis turns a history into epsilon (recorded with every persisted history)."""

    PRV = "prv"  # privacy random variables (Gopi et al. 2021), RDP fallback on numerical failure
    RDP = "rdp"  # Renyi DP (Mironov 2017), Opacus' default orders


def _check_history(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Validated history with entries of equal (sigma, q) merged (composition is commutative),
    so the cost of an analysis does not grow with the number of rounds."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        if not (sigma >= 0 and 0 < q <= 1 and int(steps) == steps and steps >= 0):
            raise BadInputError(
                f"DP history entry (noise_multiplier={sigma}, sample_rate={q}, steps={steps}) is invalid: "
                "expected noise_multiplier >= 0, 0 < sample_rate <= 1, integer steps >= 0"
            )
        if steps:
            key = (float(sigma), float(q))
            merged[key] = merged.get(key, 0) + int(steps)
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def rdp_epsilon(history: Sequence[HistoryEntry], *, delta: float) -> float:
    """Epsilon of ``history`` at ``delta`` with Opacus' RDP accountant."""
    hist = _check_history(history)
    if not hist:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in hist):
        return math.inf
    acc = RDPAccountant()
    acc.history = list(hist)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha": still a valid bound
        return float(acc.get_epsilon(delta=delta))


def prv_epsilon(history: Sequence[HistoryEntry], *, delta: float) -> float:
    """Epsilon (upper bound) of ``history`` with Opacus' PRV accountant; may raise on numerical failure."""
    hist = _check_history(history)
    if not hist:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in hist):
        return math.inf
    acc = PRVAccountant()
    acc.history = list(hist)
    return float(acc.get_epsilon(delta=delta))


def epsilon_of(history: Sequence[HistoryEntry], *, delta: float, kind: AccountantKind) -> float:
    """Epsilon of ``history`` at ``delta`` with ``kind`` (PRV falls back to RDP on failure).

    Raises
    ------
    BadInputError
        If an entry is malformed or delta is outside (0, 1).
    """
    if not 0 < delta < 1:
        raise BadInputError(f"delta: expected 0 < delta < 1, got {delta}")
    if AccountantKind(kind) is AccountantKind.RDP:
        return rdp_epsilon(history, delta=delta)
    try:
        return prv_epsilon(history, delta=delta)
    except (RuntimeError, ValueError, FloatingPointError, OverflowError) as exc:
        log.warning("PRV accountant failed (%s); using the RDP bound instead", exc)
        return rdp_epsilon(history, delta=delta)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    kind: AccountantKind,
    prior_history: Sequence[HistoryEntry] = (),
) -> float:
    """Smallest noise multiplier (to 0.2 % relative) whose total epsilon stays <= ``target_epsilon``.

    The total is ``prior_history`` followed by ``steps`` steps at ``sample_rate``. The result is
    always on the safe side: epsilon(result) <= target_epsilon with the same analysis.

    Raises
    ------
    BadInputError
        If the target is not positive and finite, ``steps`` < 1, or the prior history alone
        already reaches the target (no amount of noise helps).
    """
    if not 0 < target_epsilon < math.inf:
        raise BadInputError(f"target_epsilon: expected a finite number > 0, got {target_epsilon}")
    if steps < 1:
        raise BadInputError(f"steps: expected >= 1 planned DP steps, got {steps}")
    prior = list(prior_history)

    def eps(sigma: float, analysis: AccountantKind) -> float:
        return epsilon_of(prior + [(sigma, sample_rate, steps)], delta=delta, kind=analysis)

    # RDP first (cheap and looser); PRV, when asked for, then only searches below the RDP answer.
    high = _bisect(lambda s: eps(s, AccountantKind.RDP), target_epsilon, low=0.0, high=1.0, grow=True, steps=steps,
                   sample_rate=sample_rate, prior=len(prior))
    if AccountantKind(kind) is AccountantKind.RDP:
        return high
    if eps(high, AccountantKind.PRV) > target_epsilon:  # PRV fell back or disagrees: search upwards
        return _bisect(lambda s: eps(s, AccountantKind.PRV), target_epsilon, low=high, high=2 * high, grow=True,
                       steps=steps, sample_rate=sample_rate, prior=len(prior))
    low = 0.5 * high
    if eps(low, AccountantKind.PRV) <= target_epsilon:
        low = 0.0
    return _bisect(lambda s: eps(s, AccountantKind.PRV), target_epsilon, low=low, high=high, grow=False,
                   steps=steps, sample_rate=sample_rate, prior=len(prior))


def _bisect(eps, target: float, *, low: float, high: float, grow: bool, steps: int, sample_rate: float, prior: int) -> float:
    """Smallest sigma in (low, high] with eps(sigma) <= target, to _CALIBRATION_REL_TOL; doubles high if asked."""
    if grow:
        while eps(high) > target:
            low, high = high, high * 2
            if high > MAX_NOISE_MULTIPLIER:
                raise BadInputError(
                    f"target_epsilon={target} cannot be met with {steps} steps at sample_rate={sample_rate:.4g}"
                    f" (after {prior} earlier history entries): lower the steps or the sample rate"
                )
    while high - low > _CALIBRATION_REL_TOL * high:
        mid = (low + high) / 2
        if eps(mid) > target:
            low = mid
        else:
            high = mid
    return high
