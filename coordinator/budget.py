"""The consortium's per-site privacy budget, fed only by each site's own reports.

Invariants: a site's cumulative epsilon is whatever *that site* last reported (matched by the
Flower node that sent the reply), it never decreases, and it is never averaged with other sites.
A site is not scheduled when one more round would pass its limit (the smaller of the consortium
budget and the site's own ``max_epsilon``): the site's reply states its accountant's projection
after one more identical round; without one, the reported spend plus the cost of its last round
is used (with a fixed noise multiplier and sample rate each later round costs no more than the one
before, so this errs on the safe side). The site enforces its own policy regardless.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from protocols.atomic_files import write_text_atomic
from protocols.errors import AccountingError, BadInputError

log = logging.getLogger(__name__)

_TOLERANCE = 1e-9


@dataclasses.dataclass
class SiteBudget:
    """What the coordinator knows about one site's privacy spend."""

    site_id: str
    limit: float
    spent: float = 0.0
    last_round_epsilon: float = 0.0
    projected_next: float | None = None  # the site's own projection of its spend after one more round
    rounds_trained: int = 0
    exhausted: bool = False
    stop_reason: str = ""


class ConsortiumBudget:
    """Per-site budgets; persisted as JSON (atomic) when a path is given."""

    def __init__(self, limit_per_site: float, *, path: Path | None = None) -> None:
        if not limit_per_site > 0:
            raise BadInputError(f"consortium budget per site must be > 0, got {limit_per_site}")
        self.limit_per_site = float(limit_per_site)
        self.path = path
        self.sites: dict[str, SiteBudget] = {}

    def register(self, site_id: str, *, site_max_epsilon: float | None = None, spent: float = 0.0) -> SiteBudget:
        """Add a site (from its status reply); its limit is the stricter of both budgets."""
        limit = self.limit_per_site if site_max_epsilon is None else min(self.limit_per_site, site_max_epsilon)
        entry = self.sites.get(site_id) or SiteBudget(site_id, limit)
        entry.limit = limit
        entry.spent = max(entry.spent, float(spent))
        self.sites[site_id] = entry
        if entry.spent >= entry.limit:
            self.mark_exhausted(site_id, f"spent {entry.spent:.4g} of {entry.limit:.4g} before the run")
        self._save()
        return entry

    def schedulable(self, site_id: str) -> tuple[bool, str]:
        """Whether to send ``site_id`` a training request, and why not."""
        b = self.sites[site_id]
        if b.exhausted:
            return False, b.stop_reason or "budget exhausted"
        if b.projected_next is not None:
            if b.projected_next > b.limit + _TOLERANCE:
                return False, f"one more round would bring it to {b.projected_next:.4g}, past the limit {b.limit:.4g}"
            return True, ""
        projected = b.spent + b.last_round_epsilon
        if projected > b.limit + _TOLERANCE:
            return False, f"spent {b.spent:.4g} + last round {b.last_round_epsilon:.4g} would pass the limit {b.limit:.4g}"
        return True, ""

    def record_spend(
        self, site_id: str, *, epsilon_round: float, epsilon_cumulative: float, epsilon_next: float | None = None
    ) -> None:
        """Take a site's own report of its spend (and, if given, its projection after one more round).

        Without a projection the next round is assumed to cost no more than the last one (true for
        a fixed DP-SGD mechanism: composition grows sub-linearly).

        Raises
        ------
        AccountingError
            If the reported cumulative epsilon is lower than what the site reported before.
        """
        b = self.sites[site_id]
        if epsilon_cumulative + _TOLERANCE < b.spent:
            raise AccountingError(
                f"site {site_id} reported cumulative epsilon {epsilon_cumulative:.6g}, below its earlier "
                f"{b.spent:.6g}; a site's spend can never decrease: check its accountant state"
            )
        b.spent = float(epsilon_cumulative)
        b.last_round_epsilon = float(epsilon_round)
        b.projected_next = None if epsilon_next is None else float(epsilon_next)
        b.rounds_trained += 1
        if b.spent >= b.limit - _TOLERANCE:
            self.mark_exhausted(site_id, f"reached its limit {b.limit:.4g}")
        self._save()

    def mark_exhausted(self, site_id: str, reason: str) -> None:
        """Stop scheduling ``site_id`` for the rest of the run."""
        b = self.sites[site_id]
        if not b.exhausted:
            log.info("site %s will not be scheduled again: %s", site_id, reason)
        b.exhausted = True
        b.stop_reason = reason
        self._save()

    def consortium_epsilon(self) -> float:
        """Parallel composition over disjoint site data: the maximum over sites."""
        return max((b.spent for b in self.sites.values()), default=0.0)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {k: dataclasses.asdict(v) for k, v in sorted(self.sites.items())}

    def _save(self) -> None:
        if self.path is None:
            return
        data = json.dumps({"limit_per_site": self.limit_per_site, "sites": self.snapshot()}, indent=2, sort_keys=True)
        write_text_atomic(self.path, data)
