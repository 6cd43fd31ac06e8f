"""Signed ledger claims for what a site releases (agent.ledger does the signing and the site log).

A claim is signed before the reply is checked by the egress guard (the guard checks the claim
too) and recorded in the site's own claim log only once the reply has passed, so the log holds
exactly what left the site. Without a site signing key the reply goes out without a claim
(a ledger is then not kept for this site) and a warning says so.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable, Mapping

from agent.config import SiteConfig
from protocols.errors import LedgerBehindError
from protocols.tasks import PrivacyUnit, Task

if TYPE_CHECKING:
    from agent.guard import ClaimPins
    from agent.ledger import SiteClaimLog
    from protocols.ledger import DpSgdMechanism, SignedClaim

log = logging.getLogger(__name__)

# Claims resent in one reply at most (~1 KB each). A ledger further behind is sent them in
# "ledger-behind" refusals, before the site works for it again (require_ledger_caught_up).
MAX_RESENT_CLAIMS = 1000


@dataclasses.dataclass(frozen=True)
class PendingClaim:
    """Signed claim bytes and the action that records them in the site's claim log.

    ``prior`` are signed claims to deliver before ``payload``, oldest first: claims already in the
    site's log that the coordinator does not hold (resent), then new catch-up claims for DP steps
    charged in rounds that never replied (recorded by ``commit`` together with ``payload``).
    """

    payload: bytes
    commit: Callable[[], None]
    prior: tuple[bytes, ...] = ()


def ledger_signer(site: SiteConfig, fields: Mapping[str, object]) -> PendingClaim | None:
    """Sign a claim for a train or synthesize reply described by ``fields`` (reply field names).

    With ``ledger_claims_held`` in ``fields`` (from the train instruction), the site's claims from
    that position on are resent; DP steps its accountant charged that no claim records are claimed
    before the reply's own claim (see :class:`PendingClaim`).

    Raises
    ------
    BadInputError
        If the site key exists but cannot be loaded (mode, passphrase).
    """
    from agent.ledger import SiteClaimLog, claim_log_path, load_site_key, sign_claim, site_key_path
    from protocols.ledger import Artifact, ArtifactKind, DpSgdMechanism, MechanismKind, PlainMechanism, make_claim

    if not site_key_path(site.state.keys, site.site_id).is_file():
        log.warning("no site signing key; the reply carries no ledger claim (run `anonfed site enroll`)")
        return None
    key = load_site_key(site)
    claim_log = SiteClaimLog(claim_log_path(site.state.root))
    dataset = str(fields.get("dataset_id", "tof"))
    previous = _last_cumulative(claim_log, dataset)
    if fields["kind"] == "train":
        mechanism = DpSgdMechanism(
            noise_multiplier=float(fields["noise_multiplier"]), sample_rate=float(fields["sample_rate"]),  # type: ignore[arg-type]
            steps=int(fields["steps"]), max_grad_norm=float(fields["max_grad_norm"]),  # type: ignore[arg-type]
            delta=float(fields["delta"]), unit=PrivacyUnit(fields["unit"]), accountant=str(fields["accountant"]),  # type: ignore[arg-type]
        )
        cumulative = float(fields["epsilon_cumulative"])  # type: ignore[arg-type]
        artifact = Artifact(f"weights-r{fields['round']}", ArtifactKind.WEIGHTS, str(fields["weights_sha256"]),
                            int(fields["size"]))  # type: ignore[arg-type]
        task = Task(fields["task"])  # dpgan or stylegan-dp: both DP-SGD, both in the site's accountant
    else:
        mechanism = PlainMechanism(MechanismKind.POST_PROCESSING)
        cumulative, epsilon = previous, 0.0
        artifact = Artifact(f"samples-r{fields['round']}", ArtifactKind.SYNTHETIC, str(fields["samples_sha256"]),
                            int(fields["size"]))  # type: ignore[arg-type]
        task = Task.SYNTHESIZE
    common = dict(run_id=str(fields["run_id"]), round=int(fields["round"]), site=site.site_id,  # type: ignore[arg-type]
                  key_id=key.key_id, task=task, dataset=dataset)
    resent = _claims_to_resend(claim_log, fields.get("ledger_claims_held"))
    seq, prev = claim_log.next_seq, claim_log.last_hash
    new: list[SignedClaim] = []
    if isinstance(mechanism, DpSgdMechanism):
        # Steps charged by rounds that never replied are claimed first, so the ledger's epsilon
        # stays recomputable from its mechanisms (the coordinator refuses it otherwise).
        for catch_up, charged_by, cumulative_then in _catch_up(site, dataset, claim_log, mechanism):
            claim = make_claim(site_seq=seq, site_prev=prev, mechanism=catch_up, epsilon=max(0.0, cumulative_then - previous),
                               cumulative_epsilon=cumulative_then,
                               **{**common, "task": charged_by or task})  # type: ignore[arg-type]
            new.append(sign_claim(claim, key))
            seq, prev, previous = seq + 1, claim.claim_hash, cumulative_then
        epsilon = max(0.0, cumulative - previous)
    start = fields.get("start_weights_sha256") if fields["kind"] == "train" else None
    claim = make_claim(site_seq=seq, site_prev=prev, mechanism=mechanism, epsilon=epsilon, cumulative_epsilon=cumulative,
                       artifacts=(artifact,), start_weights_sha256=None if start is None else str(start),
                       **common)  # type: ignore[arg-type]
    new.append(sign_claim(claim, key))

    def commit() -> None:
        for signed in new:
            claim_log.record(signed)

    return PendingClaim(new[-1].to_bytes(), commit, tuple(resent + [c.to_bytes() for c in new[:-1]]))


def claim_pins(site: SiteConfig) -> "ClaimPins":
    """The site's ledger key and claim log, for :class:`agent.guard.EgressPolicy`.

    Read from the site's own key and log, not from the claims being checked, so the guard can tell
    that resent claims are the log's and that the claims a reply adds continue it under this key.

    Raises
    ------
    BadInputError
        If the site key is missing or cannot be loaded (a claim without one cannot be the site's).
    """
    from agent.guard import ClaimPins
    from agent.ledger import SiteClaimLog, claim_log_path, load_site_key

    claim_log = SiteClaimLog(claim_log_path(site.state.root))
    return ClaimPins(load_site_key(site), claim_log.last_hash,
                     frozenset(ClaimPins.digest(c.to_bytes()) for c in claim_log.claims()))


def with_resent_claims(site: SiteConfig, pending: PendingClaim | None, held: int | None) -> PendingClaim | None:
    """``pending`` with the site's logged claims from position ``held`` on as prior claims (see
    :func:`ledger_signer`); for releases whose claim is signed elsewhere (k-SALSA)."""
    if pending is None or held is None:
        return pending
    from agent.ledger import SiteClaimLog, claim_log_path

    resent = _claims_to_resend(SiteClaimLog(claim_log_path(site.state.root)), held)
    return dataclasses.replace(pending, prior=tuple(resent) + pending.prior) if resent else pending


def require_ledger_caught_up(site: SiteConfig, held: int | None) -> None:
    """Refuse to work for a request while the coordinator's ledger lacks more than
    MAX_RESENT_CLAIMS of the site's claims (``held`` is how many it holds; None: no ledger).

    Without this, the site would spend budget on a round whose claim the ledger cannot record yet
    (only the oldest MAX_RESENT_CLAIMS fit in a reply), and the coordinator would have to reject it.

    Raises
    ------
    LedgerBehindError
        Carrying the oldest MAX_RESENT_CLAIMS missing claims, for a "ledger-behind" refusal.
    """
    if held is None:
        return
    from agent.ledger import SiteClaimLog, claim_log_path

    claim_log = SiteClaimLog(claim_log_path(site.state.root))
    behind = claim_log.next_seq - int(held)
    if behind > MAX_RESENT_CLAIMS:
        resend = tuple(c.to_bytes() for c in claim_log.since(int(held))[:MAX_RESENT_CLAIMS])
        raise LedgerBehindError(
            f"the coordinator's ledger holds {held} of this site's {claim_log.next_seq} claims; the site sends "
            f"the next {len(resend)} and works again once at most {MAX_RESENT_CLAIMS} are missing",
            resend,
        )


def _claims_to_resend(claim_log: "SiteClaimLog", held: object) -> list[bytes]:
    """Claims of the site's log from the position the coordinator's ledger has reached."""
    if held is None:
        return []
    held = int(held)  # type: ignore[call-overload]
    if held > claim_log.next_seq:
        log.warning("the coordinator's ledger holds %d claims of this site but its claim log only %d; "
                    "the site's claim log is incomplete", held, claim_log.next_seq)
        return []
    resent = [c.to_bytes() for c in claim_log.since(held)]  # at most MAX_RESENT_CLAIMS: see require_ledger_caught_up
    if resent:
        log.info("resending %d claim(s) the coordinator's ledger does not hold", len(resent))
    return resent


def _catch_up(site: SiteConfig, dataset: str, claim_log: "SiteClaimLog",
              mechanism: "DpSgdMechanism") -> list[tuple["DpSgdMechanism", Task | None, float]]:
    """(mechanism, task that charged it if recorded, cumulative epsilon after it) for every
    charged-but-unclaimed run before this round."""
    from agent.dp.accounting import epsilon_of
    from agent.ledger.catch_up import Charge, catch_up_segments
    from agent.training.local_round import open_accountant

    accountant = open_accountant(site, dataset)
    charged = [Charge(r.noise_multiplier, r.sample_rate, r.steps, (r.unit, r.max_grad_norm, r.task))
               for r in accountant.reservations]
    plan = catch_up_segments(charged, claim_log.claims(), dataset=dataset,
                             this_round=(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps))
    out = []
    for (sigma, q, steps, (unit, clip, task)), upto in plan:
        log.warning("claiming %d DP steps (noise %g, rate %g) charged by an earlier round that never replied", steps, sigma, q)
        if clip is None:  # reserved by an agent that did not record the clip norm yet
            log.warning("the accountant did not record the clip norm of those steps; the claim states this round's")
        catch_up = dataclasses.replace(mechanism, noise_multiplier=sigma, sample_rate=q, steps=steps, unit=unit,
                                       max_grad_norm=mechanism.max_grad_norm if clip is None else clip)
        out.append((catch_up, task, float(epsilon_of(upto, delta=accountant.delta, kind=accountant.kind))))
    return out


def _last_cumulative(claim_log: object, dataset: str) -> float:
    from protocols.ledger import DpSgdMechanism

    for signed in reversed(claim_log.claims()):  # type: ignore[attr-defined]
        c = signed.claim
        if c.dataset == dataset and isinstance(c.mechanism, DpSgdMechanism):
            return float(c.cumulative_epsilon)
    return 0.0
