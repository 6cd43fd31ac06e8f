"""The k-SALSA release over the federation: schema, guard and handler (the release itself is faked)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.guard import EgressPolicy, check_outgoing
from agent.site_service import handle_ksalsa
from protocols import messages as m
from protocols.errors import EgressBlockedError, KAnonymityError, MessageSchemaError


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _reply(images, **over) -> m.KsalsaReply:
    base = dict(run_id="run-1", round=5, site_id="hospital-t", k=5, min_k=5, method="k-same-pixel",
                count=images.shape[0], cluster_sizes=(5, 7), majority_grades=(2, -1),
                images_sha256=m.array_sha256(images), guarantee="k-anonymity: every image averages >= 5 distinct patients",
                claim=None)
    base.update(over)
    return m.KsalsaReply(**base)


def test_reply_schema_enforces_k_anonymity() -> None:
    imgs = _images()
    with pytest.raises(MessageSchemaError, match="fewer than k = 5 distinct patients"):
        _reply(imgs, cluster_sizes=(5, 4))
    with pytest.raises(MessageSchemaError, match="below the site's min_k"):
        _reply(imgs, k=3, min_k=5)
    with pytest.raises(MessageSchemaError, match="tuple of int"):
        _reply(imgs, cluster_sizes=(5, True))
    back = m.from_recorddict(m.to_recorddict(m.Envelope(_reply(imgs), {"images": imgs})), expect=(m.KsalsaReply,))
    assert back.message.cluster_sizes == (5, 7) and back.message.majority_grades == (2, -1)


def test_guard_checks_release_against_site_min_k_and_shape() -> None:
    imgs = _images()
    ok = EgressPolicy(site_min_k=5)
    check_outgoing(m.Envelope(_reply(imgs), {"images": imgs}), ok)
    with pytest.raises(EgressBlockedError, match="below the site's privacy.min_k = 7"):
        check_outgoing(m.Envelope(_reply(imgs), {"images": imgs}), EgressPolicy(site_min_k=7))
    with pytest.raises(EgressBlockedError, match=r"expected \(2, H, W, 3\) uint8"):
        f = imgs.astype(np.float32)
        check_outgoing(m.Envelope(_reply(imgs, images_sha256=m.array_sha256(f)), {"images": f}), ok)
    with pytest.raises(EgressBlockedError, match="exactly one array"):
        check_outgoing(m.Envelope(_reply(imgs), {"images": imgs, "real": imgs}), ok)
    with pytest.raises(EgressBlockedError, match="only allowed against the site policy"):
        check_outgoing(m.Envelope(_reply(imgs), {"images": imgs}), EgressPolicy())


@dataclasses.dataclass
class _Release:
    images: np.ndarray
    sizes: tuple[int, ...]
    claim: object = None

    def reply_fields(self, site_id, request):
        return {"run_id": request.run_id, "round": request.round, "site_id": site_id, "k": request.k, "min_k": 5,
                "method": request.method.value, "count": len(self.images), "cluster_sizes": list(self.sizes),
                "majority_grades": [None] * len(self.images), "images_sha256": m.array_sha256(self.images),
                "guarantee": f"k-anonymity: every image averages >= {request.k} distinct patients"}


def _query(k: int = 5) -> m.Envelope:
    return m.Envelope(m.KsalsaQuery(run_id="run-1", round=5, k=k, method="k-same-pixel", steps=0, dataset_id="fundus"))


def test_handler_returns_the_guarded_release(site) -> None:
    imgs = _images()
    out = handle_ksalsa(site, _query(), run_task=lambda s, req: _Release(imgs, (5, 6)))
    assert isinstance(out.message, m.KsalsaReply), out.message
    assert out.message.majority_grades == (-1, -1)
    np.testing.assert_array_equal(out.arrays["images"], imgs)


def test_handler_refuses_policy_and_undersized_groups(site) -> None:
    def below_min_k(s, req):
        raise KAnonymityError(f"k = {req.k} is below privacy.min_k = 5")

    out = handle_ksalsa(site, _query(k=3), run_task=below_min_k)
    assert out.message.code == "k-anonymity" and not out.arrays  # type: ignore[union-attr]
    out = handle_ksalsa(site, _query(), run_task=lambda s, req: _Release(_images(), (5, 3)))
    assert out.message.code == "bad-message" and not out.arrays  # type: ignore[union-attr]


def test_release_resends_the_claims_the_coordinator_lacks(site, monkeypatch) -> None:
    from agent.ledger import SiteClaimLog, claim_log_path, site_key_path
    from agent.site_service.claims import PendingClaim
    from protocols.ledger import GENESIS, MechanismKind, PlainMechanism, make_claim, sign_claim
    from protocols.signing import SigningKey, save_private_key
    from protocols.tasks import Task

    key, log = SigningKey.generate(), SiteClaimLog(claim_log_path(site.state.root))
    save_private_key(key, site_key_path(site.state.keys, site.site_id))  # the guard pins claims to the site key
    signed, prev = [], GENESIS
    for seq in range(3):
        claim = make_claim(run_id="run-1", round=seq, site=site.site_id, site_seq=seq, site_prev=prev, key_id=key.key_id,
                           task=Task.SYNTHESIZE, dataset="fundus", mechanism=PlainMechanism(MechanismKind.POST_PROCESSING),
                           epsilon=0.0, cumulative_epsilon=0.0)
        signed.append(sign_claim(claim, key))
        prev = claim.claim_hash
    for s in signed[:2]:  # two claims logged (sent earlier); the third is this release's
        log.record(s)
    imgs = _images()
    release = _Release(imgs, (5, 6), PendingClaim(signed[2].to_bytes(), lambda: None))
    for held, expected in ((1, (signed[1].to_bytes(),)), (2, None), (None, None)):
        query = dataclasses.replace(_query().message, ledger_claims_held=held)
        out = handle_ksalsa(site, m.Envelope(query), run_task=lambda s, req: release)
        assert isinstance(out.message, m.KsalsaReply), out.message
        assert out.message.prior_claims == expected and out.message.claim == signed[2].to_bytes()
    # A ledger further behind than one reply carries is sent the oldest claims in a refusal, and the
    # release is not made.
    monkeypatch.setattr("agent.site_service.claims.MAX_RESENT_CLAIMS", 1)
    query = dataclasses.replace(_query().message, ledger_claims_held=0)
    out = handle_ksalsa(site, m.Envelope(query), run_task=lambda s, req: pytest.fail("released while behind"))
    assert isinstance(out.message, m.Refusal) and out.message.code == m.LEDGER_BEHIND
    assert out.message.prior_claims == (signed[0].to_bytes(),)
