"""The egress guard stops real pixels, patient keys and file paths, in several disguises."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from agent.guard import ClaimPins, EgressPolicy, check_outgoing, find_identifying_text, real_fingerprints
from agent.site_service import handle_synthesize, handle_train
from agent.site_service.engine import RoundOutcome
from protocols import messages as m
from protocols.errors import EgressBlockedError
from protocols.tasks import PrivacyUnit, Task

KEY = "0123456789abcdef0123456789abcdef"


def _weights() -> dict[str, np.ndarray]:
    return {"generator.w": np.ones((4, 8), np.float32), "critic.w": np.ones(4, np.float32)}


def _train_reply(weights, **over) -> m.TrainReply:
    base = dict(
        run_id="run-1", round=1, site_id="hospital-a", task=Task.DPGAN, num_patients=3,
        weights_sha256=m.weights_sha256(weights), epsilon_round=1.0, epsilon_cumulative=1.0, epsilon_next=None, delta=1e-5,
        unit=PrivacyUnit.PATIENT, noise_multiplier=1.0, sample_rate=0.5, steps=2, max_grad_norm=1.0,
        accountant="rdp", claim=None,
    )
    base.update(over)
    return m.TrainReply(**base)


def _policy(**over) -> EgressPolicy:
    base = dict(expected_weights=EgressPolicy.weights_spec(_weights()), synthetic_patch_size=8,
                forbidden_strings=frozenset({KEY}))
    base.update(over)
    return EgressPolicy(**base)


def _samples(n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, 2, 8, 8)).astype(np.float32)
    s[:, 1] = s[:, 1] > 0
    return s


def _synth_reply(samples, **over) -> m.SynthesizeReply:
    base = dict(run_id="run-1", round=3, site_id="hospital-a", count=samples.shape[0], method="dpgan-wgan-gp",
                guarantee="(1, 1e-05)-DP, unit patient", model_round=2, epsilon_cumulative=1.0, delta=1e-5,
                unit=PrivacyUnit.PATIENT, samples_sha256=m.array_sha256(samples), claim=None)
    base.update(over)
    return m.SynthesizeReply(**base)


def test_planned_weights_and_synthetic_samples_pass() -> None:
    w = _weights()
    check_outgoing(m.Envelope(_train_reply(w), w, {"loss.critic": 0.1}), _policy())
    s = _samples()
    check_outgoing(m.Envelope(_synth_reply(s), {"samples": s}), _policy())


def test_real_image_added_as_extra_array_is_blocked() -> None:
    w = {**_weights(), "critic.real_patch": np.zeros((8, 8), np.float32)}
    with pytest.raises(EgressBlockedError, match="not in the planned model"):
        check_outgoing(m.Envelope(_train_reply(w), w), _policy())


def test_real_image_in_place_of_a_weight_is_blocked() -> None:
    w = _weights()
    w["generator.w"] = np.zeros((32, 32), np.float32)  # image-shaped, wrong for the plan
    with pytest.raises(EgressBlockedError, match=r"planned \(4, 8\) float32"):
        check_outgoing(m.Envelope(_train_reply(w), w), _policy())
    w["generator.w"] = np.zeros((4, 8), np.uint8)  # right shape, raw pixel dtype
    with pytest.raises(EgressBlockedError, match="uint8"):
        check_outgoing(m.Envelope(_train_reply(w), w), _policy())


def test_start_digest_is_pinned_to_the_weights_the_request_carried() -> None:
    # The digest field is 256 free bits: a site must not be able to use it for anything but the
    # digest of the model it was sent (here: a hash of a patient's data, or of its own weights).
    w = _weights()
    sent = m.weights_sha256({"generator.w": np.zeros((4, 8), np.float32), "critic.w": np.zeros(4, np.float32)})
    check_outgoing(m.Envelope(_train_reply(w, start_weights_sha256=sent), w), _policy(start_weights_sha256=sent))
    check_outgoing(m.Envelope(_train_reply(w), w), _policy())  # nothing sent, nothing named
    for named, policy in ((m.weights_sha256(w), sent), ("ab" * 32, None), (None, sent)):
        with pytest.raises(EgressBlockedError, match="start_weights_sha256 is not the digest"):
            check_outgoing(m.Envelope(_train_reply(w, start_weights_sha256=named), w),
                           _policy(start_weights_sha256=policy))


def test_claim_digests_are_pinned_to_the_reply_and_the_request() -> None:
    # Digests in a claim are exempt from the text rules (they are hex by design), so a claim naming
    # another artifact or another starting model could carry 256 free bits each: both are blocked.
    from protocols.canonical import encode
    from protocols.ledger import GENESIS, Artifact, ArtifactKind, DpSgdMechanism, make_claim

    w = _weights()
    sent = m.weights_sha256({"generator.w": np.zeros((4, 8), np.float32), "critic.w": np.zeros(4, np.float32)})

    def claim(artifact_sha: str, start: str | None) -> bytes:
        c = make_claim(run_id="run-1", round=1, site="hospital-a", site_seq=0, site_prev=GENESIS, key_id=KEY,
                       task=Task.DPGAN, dataset="tof",
                       mechanism=DpSgdMechanism(1.0, 0.5, 2, 1.0, 1e-5, PrivacyUnit.PATIENT, "rdp"), epsilon=1.0,
                       cumulative_epsilon=1.0, artifacts=(Artifact("weights-r1", ArtifactKind.WEIGHTS, artifact_sha, 10),),
                       start_weights_sha256=start)
        return encode(c.to_dict())

    def send(c: bytes) -> None:
        check_outgoing(m.Envelope(_train_reply(w, start_weights_sha256=sent, claim=c), w),
                       _policy(start_weights_sha256=sent))

    send(claim(m.weights_sha256(w), sent))
    with pytest.raises(EgressBlockedError, match="claim artifacts do not name exactly"):
        send(claim("cd" * 32, sent))
    with pytest.raises(EgressBlockedError, match="claim start_weights_sha256 is not the digest"):
        send(claim(m.weights_sha256(w), "ef" * 32))


def test_weights_swapped_after_hashing_are_blocked() -> None:
    w = _weights()
    reply = _train_reply(w)
    w2 = {k: v * 2 for k, v in w.items()}
    with pytest.raises(EgressBlockedError, match="weights_sha256 does not match"):
        check_outgoing(m.Envelope(reply, w2), _policy())


def test_real_patches_passed_off_as_samples_are_blocked() -> None:
    real = _samples(4, seed=1)
    with pytest.raises(EgressBlockedError, match="byte-exact copies of real patches"):
        check_outgoing(m.Envelope(_synth_reply(real), {"samples": real}),
                       _policy(real_fingerprints=real_fingerprints(real[:, 0])))


def test_raw_scanner_values_and_extra_arrays_in_synthesize_are_blocked() -> None:
    s = _samples() * 400.0  # scanner units, not generator output
    s[:, 1] = 1.0
    with pytest.raises(EgressBlockedError, match=r"outside the generator range"):
        check_outgoing(m.Envelope(_synth_reply(s), {"samples": s}), _policy())
    s = _samples()
    with pytest.raises(EgressBlockedError, match="exactly one array"):
        check_outgoing(m.Envelope(_synth_reply(s), {"samples": s, "mask": s[:, 1]}), _policy())
    with pytest.raises(EgressBlockedError, match=r"expected \(3, 2, 8, 8\)"):
        big = np.zeros((3, 2, 64, 64), np.float32)
        check_outgoing(m.Envelope(_synth_reply(s, samples_sha256=m.array_sha256(big)), {"samples": big}), _policy())


def test_arrays_on_status_or_refusal_are_blocked() -> None:
    status = m.StatusReply(site_id="hospital-a", accepted_tasks=("dpgan",), max_epsilon=8.0, delta=1e-5,
                           unit=PrivacyUnit.PATIENT, min_patients=3, min_k=5, ksalsa_groups="nearest", epsilon_spent=0.0, num_patients=3,
                           agent_version="0.1.0")
    with pytest.raises(EgressBlockedError, match="may not carry arrays"):
        check_outgoing(m.Envelope(status, {"x": np.zeros((8, 8), np.float32)}), _policy())


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("method", f"dpgan-{KEY}", "hexadecimal"),
        ("method", "/srv/pacs/patient17/series2", "file path"),
        ("guarantee", "C:\\data\\scan", "file path"),
        ("guarantee", "from scan.dcm", "file name"),
        ("method", "uid 1.2.840.113619.2.55.3", "DICOM UID"),
    ],
)
def test_identifying_strings_in_the_body_are_blocked(field: str, value: str, rule: str) -> None:
    s = _samples()
    with pytest.raises(EgressBlockedError, match=rule):
        check_outgoing(m.Envelope(_synth_reply(s, **{field: value}), {"samples": s}), _policy())


def test_identifiers_in_metric_names_and_claims_are_blocked() -> None:
    w = _weights()
    with pytest.raises(EgressBlockedError, match="metric name"):
        check_outgoing(m.Envelope(_train_reply(w), w, {f"loss.{KEY[:20]}": 1.0}), _policy())
    claim = json.dumps({"site": "hospital-a", "note": "/home/pacs/p1.dcm"}).encode()
    with pytest.raises(EgressBlockedError, match="claim field"):
        check_outgoing(m.Envelope(_train_reply(w, claim=claim), w), _policy())
    with pytest.raises(EgressBlockedError, match="not UTF-8 JSON"):
        check_outgoing(m.Envelope(_train_reply(w, claim=b"\x89PNG\r\n"), w), _policy())
    ok = json.dumps({"site": "hospital-a", "weights_sha256": "ab" * 32, "signature": "Zm9v" * 20}).encode()
    check_outgoing(m.Envelope(_train_reply(w, claim=ok), w), _policy())
    # Resent and catch-up claims leave the site too: each gets the same checks as the reply's own.
    with pytest.raises(EgressBlockedError, match="claim field"):
        check_outgoing(m.Envelope(_train_reply(w, claim=ok, prior_claims=(ok, claim)), w), _policy())
    with pytest.raises(EgressBlockedError, match="not UTF-8 JSON"):
        check_outgoing(m.Envelope(_train_reply(w, claim=ok, prior_claims=(b"\x89PNG\r\n",)), w), _policy())
    check_outgoing(m.Envelope(_train_reply(w, claim=ok, prior_claims=(ok, ok)), w), _policy())


def test_mutated_frozen_message_and_requests_are_blocked() -> None:
    w = _weights()
    reply = _train_reply(w)
    object.__setattr__(reply, "site_id", "../../etc")  # bypasses the dataclass checks
    with pytest.raises(EgressBlockedError, match="body does not validate"):
        check_outgoing(m.Envelope(reply, w), _policy())
    ins = m.StatusQuery(run_id="run-1", dataset_id="tof")
    with pytest.raises(EgressBlockedError, match="not a reply"):
        check_outgoing(m.Envelope(ins), _policy())


def test_plain_strings_pass_the_detector() -> None:
    for ok in ("hospital-a", "dpgan-wgan-gp", "(7.9, 1e-05)-DP, unit patient", "0.1.0", "run-20261123-1630"):
        assert find_identifying_text(ok) is None, ok


# -- a handler that tries to leak is stopped, and the attempt is logged --------------------------------------
def _instruction() -> m.Envelope:
    return m.Envelope(m.TrainInstruction(
        run_id="run-1", round=1, task=Task.DPGAN, dataset_id="tof", architecture="wgan-gp", patch_size=8,
        patches_per_volume=2, local_steps=2, total_planned_steps=10, target_epsilon=4.0, delta=1e-5,
        unit=PrivacyUnit.PATIENT, expected_batch_patients=2, max_grad_norm=1.0, seed=1))


def test_handler_returning_real_pixels_as_weights_is_refused(site, engine) -> None:
    def leak(eng, data, ins, spent):
        w = eng.reference_weights(architecture="wgan-gp", patch_size=8)
        w["critic.leak"] = data.real_images[0]
        return RoundOutcome(w, 3, {}, {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 2, "max_grad_norm": 1.0,
                                        "accountant": "rdp"}, 1.0, spent + 1.0)

    engine.train_override = leak
    out = handle_train(site, _instruction(), engine=engine)
    assert isinstance(out.message, m.Refusal) and out.message.code == "egress-blocked"
    assert not out.arrays
    logged = (site.state.root / "federation" / "egress-blocked.jsonl").read_text()
    assert "not in the planned model" in logged


def test_handler_leaking_a_patient_key_in_metrics_is_refused(site, engine) -> None:
    def leak(eng, data, ins, spent):
        w = eng.reference_weights(architecture="wgan-gp", patch_size=8)
        key = sorted(data.patient_keys)[0]
        return RoundOutcome(w, 3, {f"loss.{key[:12]}x": 1.0}, {"noise_multiplier": 1.0, "sample_rate": 0.5,
                            "steps": 2, "max_grad_norm": 1.0, "accountant": "rdp"}, 1.0, spent + 1.0)

    engine.train_override = leak
    out = handle_train(site, _instruction(), engine=engine)
    assert out.message.code == "egress-blocked"  # type: ignore[union-attr]


def test_handler_sampling_real_patches_is_refused(site, engine) -> None:
    handle_train(site, _instruction(), engine=engine)
    engine.sample_override = lambda eng, n: eng.real[:n].copy()
    q = m.Envelope(m.SynthesizeQuery(run_id="run-1", round=2, count=3, seed=0, architecture="wgan-gp", patch_size=8))
    out = handle_synthesize(site, q, engine=engine)
    assert out.message.code == "egress-blocked" and not out.arrays  # type: ignore[union-attr]
    assert not list((site.state.root / "federation" / "released").glob("*.npy")) if (
        site.state.root / "federation" / "released").exists() else True


# -- claim hashes, key ids and signatures are free hex: pinned to the site's log and key ---------------
def _chain(key, n: int, prev: str, *, seq: int = 0) -> list:
    from protocols.ledger import MechanismKind, PlainMechanism, make_claim, sign_claim

    out = []
    for i in range(n):
        c = make_claim(run_id="run-1", round=seq + i, site="hospital-a", site_seq=seq + i, site_prev=prev,
                       key_id=key.key_id, task=Task.SYNTHESIZE, dataset="tof",
                       mechanism=PlainMechanism(MechanismKind.POST_PROCESSING), epsilon=0.0, cumulative_epsilon=0.0)
        out.append(sign_claim(c, key))
        prev = c.claim_hash
    return out


def _pins(key, logged) -> ClaimPins:
    from protocols.ledger import GENESIS

    return ClaimPins(key, logged[-1].claim.claim_hash if logged else GENESIS,
                     frozenset(ClaimPins.digest(c.to_bytes()) for c in logged))


def test_new_claims_must_continue_the_site_log_under_the_site_key() -> None:
    from protocols.ledger import GENESIS, SignedClaim
    from protocols.signing import SigningKey

    key, other = SigningKey.generate(), SigningKey.generate()
    logged = _chain(key, 3, GENESIS)  # the site's log: 3 claims, the coordinator holds the first
    head = logged[-1].claim.claim_hash
    new = _chain(key, 2, head, seq=3)  # a catch-up claim, then the reply's own
    policy = _policy(claim_pins=_pins(key, logged))

    def send(claims, prior=()) -> None:
        msg = _synth_reply(_samples(), claim=claims.to_bytes() if isinstance(claims, SignedClaim) else claims,
                           prior_claims=tuple(c.to_bytes() for c in prior) or None)
        check_outgoing(m.Envelope(msg, {"samples": _samples()}), policy)

    send(new[1], (*logged[1:], new[0]))  # resent + catch-up + own: passes
    send(new[0])  # nothing resent, nothing caught up
    check_outgoing(m.Envelope(_synth_reply(_samples(), claim=_chain(key, 1, GENESIS)[0].to_bytes()),
                              {"samples": _samples()}), _policy(claim_pins=_pins(key, [])))  # a site's first claim
    # 256 bits of the site's choice in site_prev (e.g. a hash of patient data), properly signed:
    with pytest.raises(EgressBlockedError, match="do not continue the site's claim log"):
        send(_chain(key, 1, hashlib.sha256(KEY.encode()).hexdigest(), seq=3)[0])
    with pytest.raises(EgressBlockedError, match="one hash chain"):
        send(new[1], (logged[0], logged[2], new[0]))  # a gap: site_prev of the third is not the second's hash
    with pytest.raises(EgressBlockedError, match="already in the site's claim log"):
        send(logged[2], logged[1:2])
    # A sequence number of the site's choice (an int is as free as a hex field):
    with pytest.raises(EgressBlockedError, match="next sequence numbers"):
        send(_chain(key, 1, head, seq=3 + 2**40)[0])
    # A key id of the site's choice (signed by that key) and a signature that is not the site key's:
    with pytest.raises(EgressBlockedError, match="names another key"):
        send(_chain(other, 1, head, seq=3)[0])
    bad_sig = dataclasses.replace(new[0], signature=_chain(key, 1, GENESIS, seq=9)[0].signature)  # valid, for another claim
    with pytest.raises(EgressBlockedError, match="signature is not the one"):
        send(bad_sig)
    with pytest.raises(EgressBlockedError, match="not a valid signed claim"):
        send(json.dumps({"site": "hospital-a", "signature": "Zm9v" * 20}).encode())


def test_resent_claims_must_be_the_logged_claims_byte_for_byte() -> None:
    # A resent claim keeps its hash when only its signature changes (the hash covers the claim),
    # so the chain alone would let 512 bits of the sender's choice ride on every resent claim.
    from protocols.ledger import GENESIS
    from protocols.signing import SigningKey

    key = SigningKey.generate()
    logged = _chain(key, 3, GENESIS)
    own = _chain(key, 1, logged[-1].claim.claim_hash, seq=3)[0]
    policy = _policy(claim_pins=_pins(key, logged))
    smuggled = dataclasses.replace(logged[1], signature=base64.b64encode(hashlib.sha512(KEY.encode()).digest()).decode())
    with pytest.raises(EgressBlockedError, match="claim 1 differs from the site's logged claim"):
        check_outgoing(m.Envelope(_synth_reply(_samples(), claim=own.to_bytes(),
                                               prior_claims=(smuggled.to_bytes(), logged[2].to_bytes())),
                                  {"samples": _samples()}), policy)

    def refusal(prior) -> m.Envelope:
        return m.Envelope(m.Refusal(run_id="run-1", round=3, site_id="hospital-a", request_kind="train-instruction",
                                    code=m.LEDGER_BEHIND, exit_code=3, reason="the ledger is behind",
                                    epsilon_cumulative=None, prior_claims=tuple(c.to_bytes() for c in prior)))

    check_outgoing(refusal(logged[:2]), policy)  # a ledger-behind refusal resends the oldest missing claims
    with pytest.raises(EgressBlockedError, match="claim 1 differs"):
        check_outgoing(refusal([logged[0], smuggled]), policy)
    with pytest.raises(EgressBlockedError, match="may only resend claims of the site's log"):
        check_outgoing(refusal([*logged, own]), policy)  # a new claim without a reply of its own


def _sign_with_nonce(key, message: bytes, r: int) -> str:
    """An Ed25519 signature of ``message`` by ``key`` with the nonce ``r`` (RFC 8032 derives r from the
    key and message; any r gives a signature that verifies). Textbook curve arithmetic, tests only."""
    p, order = 2**255 - 19, 2**252 + 27742317777372353535851937790883648493
    d = -121665 * pow(121666, -1, p) % p
    base = (15112221349535400772501151409588531511454012693041857206046113283949847762202,
            46316835694926478169428394003475163141307993866256225615783033603165251855960)

    def add(a, b):
        (x1, y1), (x2, y2) = a, b
        t = d * x1 * x2 * y1 * y2 % p
        return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, p) % p, (y1 * y2 + x1 * x2) * pow(1 - t, -1, p) % p)

    def mul(n, pt):
        out = (0, 1)
        while n:
            out, pt, n = (add(out, pt) if n & 1 else out), add(pt, pt), n >> 1
        return out

    def enc(pt) -> bytes:
        return (pt[1] | (pt[0] & 1) << 255).to_bytes(32, "little")

    h = hashlib.sha512(key._key.private_bytes_raw()).digest()
    a = int.from_bytes(h[:32], "little") & ~7 & ((1 << 254) - 1) | 1 << 254
    big_r = enc(mul(r % order, base))
    k = int.from_bytes(hashlib.sha512(big_r + enc(mul(a, base)) + message).digest(), "little") % order
    return base64.b64encode(big_r + ((r + k * a) % order).to_bytes(32, "little")).decode()


def test_a_valid_signature_with_a_chosen_nonce_is_blocked() -> None:
    # Half of an Ed25519 signature is R = rB for a nonce r; a signer free to pick r sends 256 bits
    # that verify. The site signs deterministically, so the guard re-signs and compares.
    from protocols.canonical import tagged
    from protocols.ledger import CLAIM_DOMAIN, GENESIS
    from protocols.signing import SigningKey

    key = SigningKey.generate()
    own = _chain(key, 1, GENESIS)[0]
    message = tagged(CLAIM_DOMAIN, own.claim.canonical)
    prefix = hashlib.sha512(key._key.private_bytes_raw()).digest()[32:]
    honest_r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little")
    assert _sign_with_nonce(key, message, honest_r) == own.signature  # the helper is RFC 8032 Ed25519
    chosen = dataclasses.replace(own, signature=_sign_with_nonce(key, message, int.from_bytes(KEY.encode(), "big")))
    assert chosen.signature != own.signature
    assert key.public.is_valid(chosen.signature, domain=CLAIM_DOMAIN, payload=own.claim.canonical)
    policy = _policy(claim_pins=_pins(key, []))
    check_outgoing(m.Envelope(_synth_reply(_samples(), claim=own.to_bytes()), {"samples": _samples()}), policy)
    with pytest.raises(EgressBlockedError, match="signature is not the one the site's ledger key gives"):
        check_outgoing(m.Envelope(_synth_reply(_samples(), claim=chosen.to_bytes()), {"samples": _samples()}), policy)


def test_handler_whose_claim_smuggles_bits_in_site_prev_is_refused_and_not_logged(site, engine) -> None:
    from agent.flower_client.enroll import enroll
    from agent.ledger import SiteClaimLog, claim_log_path, load_site_key, sign_claim
    from agent.site_service.claims import PendingClaim, ledger_signer
    from protocols.ledger import SignedClaim

    enroll(site)
    handle_train(site, _instruction(), engine=engine)

    def query(round_: int) -> m.Envelope:
        return m.Envelope(m.SynthesizeQuery(run_id="run-1", round=round_, count=3, seed=0, architecture="wgan-gp",
                                            patch_size=8))

    honest = handle_synthesize(site, query(2), engine=engine, sign_claim=ledger_signer)
    assert isinstance(honest.message, m.SynthesizeReply) and honest.message.claim is not None

    def smuggle(site_, fields):  # a signer that hides 256 bits of its choice in site_prev, and signs them
        pending = ledger_signer(site_, fields)
        forged = dataclasses.replace(SignedClaim.from_bytes(pending.payload).claim, site_prev=hashlib.sha256(KEY.encode()).hexdigest())
        return PendingClaim(sign_claim(forged, load_site_key(site_)).to_bytes(), pending.commit)

    out = handle_synthesize(site, query(3), engine=engine, sign_claim=smuggle)
    assert isinstance(out.message, m.Refusal) and out.message.code == "egress-blocked" and not out.arrays
    assert SiteClaimLog(claim_log_path(site.state.root)).next_seq == 1  # only the honest reply's claim
    logged = (site.state.root / "federation" / "egress-blocked.jsonl").read_text()
    assert "do not continue the site's claim log" in logged


def test_ledger_behind_refusal_with_a_tampered_resent_claim_goes_out_without_claims(site, engine, monkeypatch) -> None:
    from agent.flower_client.enroll import enroll
    from agent.ledger import SiteClaimLog, claim_log_path
    from agent.site_service.claims import ledger_signer
    from protocols.errors import LedgerBehindError

    enroll(site)
    handle_train(site, _instruction(), engine=engine)
    query = m.Envelope(m.SynthesizeQuery(run_id="run-1", round=2, count=3, seed=0, architecture="wgan-gp", patch_size=8))
    assert handle_synthesize(site, query, engine=engine, sign_claim=ledger_signer).message.claim is not None
    (logged,) = SiteClaimLog(claim_log_path(site.state.root)).claims()

    def behind(resend):
        def check(site_, held):
            raise LedgerBehindError("the coordinator's ledger is behind", resend)
        monkeypatch.setattr("agent.site_service.handlers.require_ledger_caught_up", check)
        return handle_synthesize(site, query, engine=engine, sign_claim=ledger_signer).message

    honest = behind((logged.to_bytes(),))
    assert isinstance(honest, m.Refusal) and honest.code == m.LEDGER_BEHIND and honest.prior_claims == (logged.to_bytes(),)
    tampered = dataclasses.replace(logged, signature=base64.b64encode(hashlib.sha512(KEY.encode()).digest()).decode())
    out = behind((tampered.to_bytes(),))
    assert isinstance(out, m.Refusal) and out.code == m.LEDGER_BEHIND and out.prior_claims is None
    assert "claim 0 differs from the site's logged claim" in (site.state.root / "federation" / "egress-blocked.jsonl").read_text()


def test_a_blocked_reply_is_not_quoted_in_the_refusal(site, engine) -> None:
    # The guard's findings name what it saw (here a claim's JSON key); the refusal that leaves the
    # site instead of the reply must not carry them, or the refusal would be the channel.
    from agent.flower_client.enroll import enroll
    from agent.site_service.claims import PendingClaim

    enroll(site)
    handle_train(site, _instruction(), engine=engine)
    hidden = "tumour-board-7731"
    query = m.Envelope(m.SynthesizeQuery(run_id="run-1", round=2, count=3, seed=0, architecture="wgan-gp", patch_size=8))
    out = handle_synthesize(site, query, engine=engine, sign_claim=lambda site_, fields: PendingClaim(
        json.dumps({hidden: "/home/pacs/p1.dcm"}).encode(), lambda: None))
    assert isinstance(out.message, m.Refusal) and out.message.code == "egress-blocked"
    assert hidden not in out.message.reason and "blocked by the site's egress guard" in out.message.reason
    assert hidden in (site.state.root / "federation" / "egress-blocked.jsonl").read_text()
