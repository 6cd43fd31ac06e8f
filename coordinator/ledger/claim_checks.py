"""Checks of a site's claim against that site's earlier claims (shared by append and audit).

For each site the tracker keeps: the next expected ``site_seq``, the hash of its last claim, and per
dataset the DP-SGD history, its ``delta`` and the current cumulative epsilon. A claim passes when:

- ``site_seq`` is the next number (lower: replayed or duplicated; higher: claims are missing) and
  ``site_prev`` is the hash of the site's previous claim (:class:`ChainError` otherwise);
- for DP-SGD: ``delta`` equals the dataset's earlier delta, ``cumulative_epsilon`` is not below the
  previous value, ``epsilon == cumulative_epsilon - previous`` (relative 1e-9), and the cumulative
  value passes :meth:`EpsilonRecomputer.check` for the whole history (:class:`AccountingError`);
- for k-anonymity and post-processing: ``cumulative_epsilon`` repeats the dataset's current value
  (:class:`AccountingError`); k-anonymity releases also need ``k >= min_k`` and every cluster to
  hold at least ``k`` distinct patients (:class:`KAnonymityError`);
- ``none`` (no DP) releases are recorded with infinite epsilon and mark the dataset as released
  without a guarantee; they do not enter the DP composition, and any later DP-SGD claim on that
  dataset is refused (its finite epsilon would mislead).

:meth:`SiteTracker.check` never mutates; :meth:`SiteTracker.accept` applies a checked claim.
"""

from __future__ import annotations

import dataclasses

from protocols.errors import AccountingError, ChainError, KAnonymityError
from protocols.ledger import GENESIS, DpSgdMechanism, MechanismKind, SiteClaim

from coordinator.audit.recompute import EpsilonRecomputer, Recomputed

EPS_SUM_REL_TOL = 1e-9


@dataclasses.dataclass
class DatasetState:
    """One (site, dataset) accountant as reconstructed from the ledger."""

    history: int = EpsilonRecomputer.EMPTY
    delta: float | None = None
    cumulative: float = 0.0
    released_without_dp: bool = False


@dataclasses.dataclass
class SiteState:
    """What the ledger knows about one site so far."""

    next_seq: int = 0
    last_claim_hash: str = GENESIS
    datasets: dict[str, DatasetState] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Planned:
    """The result of a successful check, applied by :meth:`SiteTracker.accept`."""

    history: int
    recomputed: Recomputed | None


class SiteTracker:
    """Per-site sequence and epsilon state over a ledger read in order."""

    def __init__(self, recomputer: EpsilonRecomputer | None = None) -> None:
        self.recomputer = recomputer or EpsilonRecomputer()
        self.sites: dict[str, SiteState] = {}

    def state(self, site: str) -> SiteState:
        return self.sites.get(site) or SiteState()

    def check(self, claim: SiteClaim) -> Planned:
        """Check ``claim`` against the site's earlier claims; see the module docstring.

        Raises
        ------
        ChainError
            If the claim is out of sequence for its site (replayed, duplicated, or claims missing).
        AccountingError
            If its epsilon is inconsistent with the site's history or with the recomputation.
        KAnonymityError
            If a k-anonymity release has k below its minimum or a cluster smaller than k.
        """
        site = self.state(claim.site)
        who = f"site {claim.site} claim {claim.site_seq}"
        if claim.site_seq < site.next_seq:
            raise ChainError(
                f"{who}: replayed or duplicated claim; site_seq {claim.site_seq} was already recorded "
                f"(expected {site.next_seq})"
            )
        if claim.site_seq > site.next_seq:
            raise ChainError(
                f"{who}: claims {site.next_seq}..{claim.site_seq - 1} of this site are missing (omitted or deleted); "
                "the site can resend them from its claim log"
            )
        if claim.site_prev != site.last_claim_hash:
            raise ChainError(f"{who}: site_prev {claim.site_prev[:16]}... does not match the site's previous claim "
                             f"{site.last_claim_hash[:16]}... (the site's claim chain is broken)")
        ds = site.datasets.get(claim.dataset) or DatasetState()
        mech = claim.mechanism
        if isinstance(mech, DpSgdMechanism):
            return self._check_dp(claim, mech, ds, who)
        if mech.kind is MechanismKind.NONE:
            return Planned(ds.history, None)
        if claim.cumulative_epsilon != ds.cumulative:
            raise AccountingError(
                f"{who}: a {mech.kind.value} release adds no DP cost, so cumulative_epsilon must stay "
                f"{ds.cumulative!r} for dataset {claim.dataset}; got {claim.cumulative_epsilon!r}"
            )
        if claim.kanon is not None:
            k = claim.kanon
            if k.k < k.min_k:
                raise KAnonymityError(f"{who}: k = {k.k} is below the recorded minimum min_k = {k.min_k}")
            small = [n for n in k.cluster_sizes if n < k.k]
            if small:
                raise KAnonymityError(
                    f"{who}: {len(small)} cluster(s) hold fewer than k = {k.k} distinct patients (smallest {min(small)})"
                )
        return Planned(ds.history, None)

    def _check_dp(self, claim: SiteClaim, mech: DpSgdMechanism, ds: DatasetState, who: str) -> Planned:
        if ds.released_without_dp:
            raise AccountingError(
                f"{who}: dataset {claim.dataset} was already released WITHOUT differential privacy "
                "(epsilon = infinity); a finite cumulative epsilon for it would mislead"
            )
        if ds.delta is not None and mech.delta != ds.delta:
            raise AccountingError(
                f"{who}: delta {mech.delta!r} differs from {ds.delta!r} used earlier for dataset {claim.dataset}; "
                "one accountant per site and dataset needs one delta"
            )
        cum, prev = claim.cumulative_epsilon, ds.cumulative
        if cum < prev:
            raise AccountingError(
                f"{who}: cumulative epsilon decreased from {prev!r} to {cum!r} for dataset {claim.dataset}; "
                "cumulative privacy loss can only grow"
            )
        if abs(claim.epsilon - (cum - prev)) > EPS_SUM_REL_TOL * max(1.0, cum):
            raise AccountingError(
                f"{who}: epsilon {claim.epsilon!r} must equal cumulative {cum!r} minus previous {prev!r} = {cum - prev!r}"
            )
        history = self.recomputer.extend(
            ds.history, sample_rate=mech.sample_rate, noise_multiplier=mech.noise_multiplier, steps=mech.steps
        )
        result = self.recomputer.check(cum, history, mech.delta)
        if not result.ok:
            raise AccountingError(f"{who}: cumulative epsilon does not match the recorded mechanisms: {result.rule}")
        return Planned(history, result)

    def accept(self, claim: SiteClaim, planned: Planned | None = None) -> None:
        """Apply ``claim`` to the site's state (after :meth:`check`, or to continue past a finding)."""
        site = self.sites.setdefault(claim.site, SiteState())
        site.next_seq = max(site.next_seq, claim.site_seq + 1)
        site.last_claim_hash = claim.claim_hash
        ds = site.datasets.setdefault(claim.dataset, DatasetState())
        mech = claim.mechanism
        if isinstance(mech, DpSgdMechanism):
            if planned is None:
                planned = Planned(
                    self.recomputer.extend(ds.history, sample_rate=mech.sample_rate,
                                           noise_multiplier=mech.noise_multiplier, steps=mech.steps),
                    None,
                )
            ds.history = planned.history
            ds.delta = ds.delta if ds.delta is not None else mech.delta
            ds.cumulative = claim.cumulative_epsilon
        elif mech.kind is MechanismKind.NONE:
            ds.released_without_dp = True
