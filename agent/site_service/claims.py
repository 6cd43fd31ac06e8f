"""Signed ledger claims for what a site releases (agent.ledger does the signing and the site log).

A claim is signed before the reply is checked by the egress guard (the guard checks the claim
too) and recorded in the site's own claim log only once the reply has passed, so the log holds
exactly what left the site. Without a site signing key the reply goes out without a claim
(a ledger is then not kept for this site) and a warning says so.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping

from agent.config import SiteConfig
from protocols.tasks import PrivacyUnit, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PendingClaim:
    """Signed claim bytes and the action that records them in the site's claim log."""

    payload: bytes
    commit: Callable[[], None]


def ledger_signer(site: SiteConfig, fields: Mapping[str, object]) -> PendingClaim | None:
    """Sign a claim for a train or synthesize reply described by ``fields`` (reply field names).

    Raises
    ------
    BadInputError
        If the site key exists but cannot be loaded (mode, passphrase).
    """
    from agent.ledger import SiteClaimLog, claim_log_path, load_site_key, sign_claim, site_key_path
    from protocols.ledger import Artifact, ArtifactKind, DpSgdMechanism, MechanismKind, PlainMechanism

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
        epsilon = max(0.0, cumulative - previous)
        artifact = Artifact(f"weights-r{fields['round']}", ArtifactKind.WEIGHTS, str(fields["weights_sha256"]),
                            int(fields["size"]))  # type: ignore[arg-type]
        task = Task(fields["task"])  # dpgan or stylegan-dp: both DP-SGD, both in the site's accountant
    else:
        mechanism = PlainMechanism(MechanismKind.POST_PROCESSING)
        cumulative, epsilon = previous, 0.0
        artifact = Artifact(f"samples-r{fields['round']}", ArtifactKind.SYNTHETIC, str(fields["samples_sha256"]),
                            int(fields["size"]))  # type: ignore[arg-type]
        task = Task.SYNTHESIZE
    claim = claim_log.new_claim(
        run_id=str(fields["run_id"]), round=int(fields["round"]), site=site.site_id, key_id=key.key_id,  # type: ignore[arg-type]
        task=task, dataset=dataset, mechanism=mechanism, epsilon=epsilon, cumulative_epsilon=cumulative,
        artifacts=(artifact,),
    )
    signed = sign_claim(claim, key)
    return PendingClaim(signed.to_bytes(), lambda: claim_log.record(signed))


def _last_cumulative(claim_log: object, dataset: str) -> float:
    from protocols.ledger import DpSgdMechanism

    for signed in reversed(claim_log.claims()):  # type: ignore[attr-defined]
        c = signed.claim
        if c.dataset == dataset and isinstance(c.mechanism, DpSgdMechanism):
            return float(c.cumulative_epsilon)
    return 0.0
