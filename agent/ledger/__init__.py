"""The site side of the privacy ledger: sign claims, keep the site's own copy, show it.

Public API (plain Python; the ClientApp only calls these)::

    from agent.ledger import SiteClaimLog, claim_log_path, load_site_key, sign_claim
    from protocols.ledger import DpSgdMechanism, Artifact, ArtifactKind

    key = load_site_key(cfg)                          # state/keys/<site_id>.key, mode 0600
    log = SiteClaimLog(claim_log_path(cfg.state.root))
    claim = log.new_claim(run_id="run-7", round=3, site=cfg.site_id, key_id=key.key_id,
                          task=Task.DPGAN, dataset="tof", mechanism=DpSgdMechanism(...),
                          epsilon=0.4, cumulative_epsilon=2.1, artifacts=(Artifact(...),))
    signed = sign_claim(claim, key)
    log.record(signed)                                # fsync'd before anything leaves the site
    payload: bytes = signed.to_bytes()                # canonical; put in the Flower reply

``compare_with_ledger`` finds claims the coordinator omitted or altered; ``unclaimed_history``
finds DP steps the durable accountant charged that no claim records yet (claim them, e.g. as a
DP-SGD claim without artifacts, before the next release, or the coordinator refuses it);
``anonfed ledger show --config site.yaml`` prints what this site released and spent.
"""

from agent.ledger.catch_up import unclaimed_history
from agent.ledger.compare import Discrepancy, DiscrepancyKind, compare_with_ledger, read_ledger_entries
from agent.ledger.keys import load_site_key, site_key_path
from agent.ledger.site_log import SiteClaimLog, claim_log_path
from protocols.ledger import make_claim, sign_claim

__all__ = [
    "Discrepancy", "DiscrepancyKind", "SiteClaimLog", "claim_log_path", "compare_with_ledger", "load_site_key",
    "make_claim", "read_ledger_entries", "sign_claim", "site_key_path", "unclaimed_history",
]
