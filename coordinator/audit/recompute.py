"""Independent recomputation of DP-SGD epsilon from recorded mechanism parameters.

Sites record epsilon with Opacus (PRV, falling back to RDP). The auditor and the coordinator's
append checks recompute it with Google's ``dp-accounting`` instead, a separate implementation of
the same analyses, so a bug or a lie in one does not pass unnoticed.

What is composed: for one site and one dataset, every DP-SGD claim in ledger order, each
``steps`` times a Poisson-subsampled Gaussian with (``sample_rate``, ``noise_multiplier``), under
the add-or-remove-one relation (as Opacus), at the claim's ``delta``.

The tolerance rule (``check``), with ``rec`` the recorded cumulative epsilon:

1. Upper bound: ``rec <= eps_RDP * (1 + 1e-4) + 1e-9``, where ``eps_RDP`` is dp-accounting's
   ``RdpAccountant`` on Opacus 1.6's order grid (restated below, not imported). RDP is a proven
   upper bound and PRV is tighter, so a larger recorded value does not describe the recorded
   mechanism. 1e-4 covers numerical differences in evaluating the RDP series. (Measured here:
   dp-accounting's RDP came out 1e-5 to 1e-3 relative *above* Opacus' on the same orders, because
   it drops orders whose series does not converge; an Opacus RDP figure then passes rule 2 via PLD.)
2. Lower bound: either ``rec >= eps_RDP * (1 - 1e-4)`` (an RDP figure) or
   ``rec >= eps_PLD * (1 - 0.02) - 0.02``, where ``eps_PLD`` is dp-accounting's pessimistic
   ``PLDAccountant`` (discretisation 1e-3). PRV and PLD are both numerical estimates of the tight
   bound; Opacus' PRV has an absolute error target of 0.01, hence the 2 % + 0.02 slack. A value
   below that under-reports the privacy loss: the worst failure, always an error.

Speed: the per-step RDP vector is cached per (q, sigma); histories are interned as a tree of
prefixes so equal histories (many sites, same schedule) share their epsilon; PLD is computed only
for non-RDP figures and cached per history.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings

import numpy as np

log = logging.getLogger(__name__)

# Opacus 1.6 RDPAccountant.DEFAULT_ALPHAS, restated so the auditor does not import Opacus.
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])
RDP_REL_TOL = 1e-4
RDP_ABS_TOL = 1e-9
PLD_REL_TOL = 0.02
PLD_ABS_TOL = 0.02
PLD_DISCRETIZATION = 1e-3  # 1e-4 changed epsilon by ~2e-6 relative here at 10x the time

Segment = tuple[float, float, int]  # (sample_rate, noise_multiplier, steps)
_UNIT_RDP: dict[tuple[float, float], np.ndarray] = {}  # per-step RDP vector of one (q, sigma)
# PLD epsilon per (segments, delta): slow to compute and a pure function, so shared process-wide
# (the coordinator's append check and a later audit in the same process reuse it).
_PLD_EPS: dict[tuple[tuple[Segment, ...], float], float] = {}


@dataclasses.dataclass(frozen=True)
class Recomputed:
    """Outcome of checking one recorded cumulative epsilon."""

    ok: bool
    recorded: float
    rdp: float
    pld: float | None
    rule: str  # which rule decided, or why it failed


_ORDERS_ARRAY = np.array(ORDERS)
_OFFSETS: dict[float, np.ndarray] = {}  # per delta: log1p(-1/a) - log(delta*a)/(a-1) for every order a


def _rdp_to_epsilon(rdp: np.ndarray, delta: float) -> float:
    """dp-accounting's ``compute_epsilon`` (RDP -> (epsilon, delta), Canonne et al. Prop. 12), vectorised.

    The library evaluates it in a Python loop over the orders (~0.1 ms), once per ledger entry of
    a realistic ledger; this is the same formula and branches for our orders (all > 1.01), checked
    against the library in tests/coordinator/audit/test_recompute.py.
    """
    rdp_min = float(rdp.min())
    if rdp_min >= 0 and delta**2 + math.expm1(-rdp_min) <= 0:
        # Common case: neither special branch applies to any order, and the per-order offset
        # depends only on delta (cached), so epsilon is one addition and one minimum.
        offset = _OFFSETS.get(delta)
        if offset is None:
            a = _ORDERS_ARRAY
            offset = _OFFSETS[delta] = np.log1p(-1 / a) - np.log(delta * a) / (a - 1)
        return float(max(0.0, (rdp + offset).min()))
    a = _ORDERS_ARRAY
    with np.errstate(over="ignore", invalid="ignore"):
        eps = rdp + np.log1p(-1 / a) - np.log(delta * a) / (a - 1)
        eps = np.where(delta**2 + np.expm1(-rdp) > 0, 0.0, eps)  # KL bound already gives epsilon 0
        eps = np.where(rdp < 0, 0.0, eps)  # numerical noise on extreme events (the library warns)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return float(max(0.0, eps.min()))


class EpsilonRecomputer:
    """Composes DP-SGD histories with dp-accounting and checks recorded epsilons.

    A *history* is an opaque integer handle: ``EMPTY`` is no DP-SGD at all, :meth:`extend` adds
    one segment. Handles are shared between identical histories.
    """

    EMPTY = 0

    def __init__(self) -> None:
        import dp_accounting  # noqa: F401  (fail early and clearly if missing)

        self._unit = _UNIT_RDP  # pure function of (q, sigma): shared by every instance
        self._children: dict[tuple[int, Segment], int] = {}
        self._parent: list[tuple[int, Segment | None]] = [(0, None)]
        self._rdp: list[np.ndarray] = [np.zeros(len(ORDERS))]
        self._eps_rdp: dict[tuple[int, float], float] = {}

    def _unit_rdp(self, q: float, sigma: float) -> np.ndarray:
        vec = self._unit.get((q, sigma))
        if vec is None:
            from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
            from dp_accounting.rdp import RdpAccountant

            acc = RdpAccountant(orders=ORDERS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                acc.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), 1)
            # RDP composes by addition; dp-accounting keeps the vector in ``_rdp`` and offers no
            # public getter. tests/coordinator/audit/test_recompute.py guards this against upgrades.
            vec = np.array(acc._rdp, dtype=np.float64)
            self._unit[(q, sigma)] = vec
        return vec

    def extend(self, history: int, *, sample_rate: float, noise_multiplier: float, steps: int) -> int:
        """The history ``history`` followed by ``steps`` steps at (q, sigma)."""
        seg: Segment = (sample_rate, noise_multiplier, steps)
        key = (history, seg)
        node = self._children.get(key)
        if node is None:
            node = len(self._parent)
            self._parent.append((history, seg))
            self._rdp.append(self._rdp[history] + steps * self._unit_rdp(sample_rate, noise_multiplier))
            self._children[key] = node
        return node

    def segments(self, history: int) -> list[Segment]:
        """The segments of ``history`` in order."""
        out: list[Segment] = []
        while history:
            parent, seg = self._parent[history]
            out.append(seg)  # type: ignore[arg-type]
            history = parent
        return out[::-1]

    def rdp_epsilon(self, history: int, delta: float) -> float:
        """Epsilon of ``history`` at ``delta`` by dp-accounting's RDP conversion."""
        if history == self.EMPTY:
            return 0.0
        key = (history, delta)
        eps = self._eps_rdp.get(key)
        if eps is None:
            eps = _rdp_to_epsilon(self._rdp[history], delta)
            self._eps_rdp[key] = eps
        return eps

    def pld_epsilon(self, history: int, delta: float) -> float:
        """Epsilon of ``history`` at ``delta`` by dp-accounting's PLD accountant (slow; cached)."""
        if history == self.EMPTY:
            return 0.0
        merged: list[Segment] = []
        for q, sigma, steps in self.segments(history):  # equal consecutive segments compose as one
            if merged and merged[-1][:2] == (q, sigma):
                merged[-1] = (q, sigma, merged[-1][2] + steps)
            else:
                merged.append((q, sigma, steps))
        segments = tuple(merged)
        key = (segments, delta)
        eps = _PLD_EPS.get(key)
        if eps is None:
            from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
            from dp_accounting.pld import PLDAccountant

            acc = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
            for q, sigma, steps in segments:
                acc.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
            eps = float(acc.get_epsilon(delta))
            _PLD_EPS[key] = eps
        return eps

    def check(self, recorded: float, history: int, delta: float) -> Recomputed:
        """Apply the module's tolerance rule to a recorded cumulative epsilon."""
        rdp = self.rdp_epsilon(history, delta)
        if not math.isfinite(recorded):
            return Recomputed(False, recorded, rdp, None, "recorded epsilon is not finite for a DP-SGD history")
        upper = rdp * (1 + RDP_REL_TOL) + RDP_ABS_TOL
        if recorded > upper:
            return Recomputed(
                False, recorded, rdp, None,
                f"recorded {recorded:.6g} exceeds the RDP upper bound {rdp:.6g} (tolerance {RDP_REL_TOL:g} relative)",
            )
        if recorded >= rdp * (1 - RDP_REL_TOL):
            return Recomputed(True, recorded, rdp, None, "matches RDP")
        pld = self.pld_epsilon(history, delta)
        lower = pld * (1 - PLD_REL_TOL) - PLD_ABS_TOL
        if recorded >= lower:
            return Recomputed(True, recorded, rdp, pld, "within PLD tolerance")
        return Recomputed(
            False, recorded, rdp, pld,
            f"recorded {recorded:.6g} is below the PLD estimate {pld:.6g} minus tolerance "
            f"({PLD_REL_TOL:g} relative + {PLD_ABS_TOL:g}): privacy loss under-reported",
        )
