"""Reconcile the site's durable DP accountant with the DP-SGD claims it has signed.

The accountant charges steps *before* they run (write-ahead), so after a crash or a failed round
it holds steps that no claim records. The ledger's epsilon must be recomputable from the claims
alone, so every charged step must eventually appear in a claim: :func:`unclaimed_history` returns
the charged-but-unclaimed steps, to be claimed (e.g. as a DP-SGD claim without artifacts) before
or together with the next release. Otherwise the next claim's cumulative epsilon exceeds what its
recorded mechanisms give and the coordinator refuses it.
"""

from __future__ import annotations

from typing import Hashable, NamedTuple, Sequence

from protocols.errors import AccountingError
from protocols.ledger import DpSgdMechanism, SignedClaim

Segment = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps): what composition needs


class Charge(NamedTuple):
    """A block of charged DP steps; ``terms`` is what else it was charged with (e.g. unit and clip norm).

    Composition depends on (noise, rate, steps) only, so claims are matched on those; ``terms`` is
    carried so that a catch-up claim states what was actually charged, not the reporting round's.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    terms: Hashable = None


def _runs(segments: Sequence[Segment | Charge]) -> list[Charge]:
    """Merge consecutive blocks with equal (noise, rate, terms); composition does not see the split."""
    out: list[Charge] = []
    for sigma, q, steps, *terms in segments:
        if steps <= 0 or sigma == 0:  # sigma 0 = a non-DP release, claimed as mechanism "none"
            continue
        charge = Charge(float(sigma), float(q), int(steps), terms[0] if terms else None)
        if out and out[-1][:2] == charge[:2] and out[-1].terms == charge.terms:
            out[-1] = out[-1]._replace(steps=out[-1].steps + charge.steps)
        else:
            out.append(charge)
    return out


def unclaimed_history(history: Sequence[Segment | Charge], claims: Sequence[SignedClaim], *,
                      dataset: str) -> list[Charge]:
    """The part of ``history`` (the accountant's, in order) not covered by the DP-SGD ``claims`` of ``dataset``.

    Raises
    ------
    AccountingError
        If the claims are not a prefix of the accountant's history (they record steps the
        accountant never charged, or in another order).
    """
    charged = _runs(history)
    claimed = _claimed_runs(claims, dataset)
    i = 0
    for sigma, q, steps, _ in claimed:
        while steps:
            if i >= len(charged) or charged[i][:2] != (sigma, q):
                raise AccountingError(
                    f"dataset {dataset}: the signed claims record DP steps (noise {sigma}, rate {q}) that the "
                    "durable accountant did not charge in that order; the claim log and accountant disagree"
                )
            take = min(steps, charged[i][2])
            steps -= take
            rest = charged[i][2] - take
            if rest:
                charged[i] = charged[i]._replace(steps=rest)
            else:
                i += 1
    return charged[i:]


def catch_up_segments(history: Sequence[Segment | Charge], claims: Sequence[SignedClaim], *, dataset: str,
                      this_round: Segment) -> list[tuple[Charge, list[Segment]]]:
    """The DP steps to claim before this round's own claim, each with the history up to and including it.

    ``history`` is the accountant's after this round charged ``this_round`` (its steps are the last
    ones charged); everything charged but unclaimed before that (rounds that crashed or whose reply
    was refused after charging) is returned as one :class:`Charge` per (noise, rate, terms) run,
    with the charged history up to its end (to compute the cumulative epsilon such a claim must state).

    Raises
    ------
    AccountingError
        If the claims are not a prefix of the history, or the history does not end with this round's steps.
    """
    unclaimed = unclaimed_history(history, claims, dataset=dataset)
    sigma, q, steps = this_round
    if not unclaimed or unclaimed[-1][:2] != (float(sigma), float(q)) or unclaimed[-1][2] < steps:
        raise AccountingError(
            f"dataset {dataset}: the durable accountant does not end with this round's {steps} steps at noise "
            f"{sigma}, rate {q}; it and the reply disagree, so no claim is signed"
        )
    last = unclaimed[-1]
    earlier = unclaimed[:-1] + ([last._replace(steps=last.steps - steps)] if last.steps > steps else [])
    # The claims are the accountant's prefix (checked above), so they and the catch-ups so far are
    # the history each catch-up claim's cumulative epsilon covers.
    claimed: list[Segment] = [c[:3] for c in _claimed_runs(claims, dataset)]
    return [(charge, claimed + [c[:3] for c in earlier[: i + 1]]) for i, charge in enumerate(earlier)]


def _claimed_runs(claims: Sequence[SignedClaim], dataset: str) -> list[Charge]:
    """The DP-SGD segments the ``claims`` of ``dataset`` record, merged into runs."""
    return _runs([
        (c.claim.mechanism.noise_multiplier, c.claim.mechanism.sample_rate, c.claim.mechanism.steps)
        for c in claims
        if c.claim.dataset == dataset and isinstance(c.claim.mechanism, DpSgdMechanism)
    ])
