"""Check an outgoing envelope against the schemas and the round plan; block anything else.

What may leave (DESIGN, trust boundary 1): DP-trained weights with exactly the names, shapes and
dtypes of the planned model, aggregate metrics, synthetic samples of the planned shape, and signed
claims. Rules, per reply kind:

* every reply: a known reply kind that re-validates from its own encoding; no string (in the body,
  metric names or claim) that looks like a path, a patient key, a UID or a site-private name;
* ``train-reply``: arrays are exactly the planned weights (names, shapes, float32, finite) and
  their digest matches ``weights_sha256``;
* ``synthesize-reply``: one array ``samples`` of shape (count, 2, S, S) float32, image channel in
  [-1, 1], label channel in {0, 1}, digest matching ``samples_sha256``, and no sample whose image
  channel is a byte-exact copy of a real training patch;
* ``ksalsa-reply``: one array ``images`` (count, H, W, 3) uint8 matching ``images_sha256``, every
  group of >= k distinct patients and k >= the site's own ``privacy.min_k``;
* ``status-reply`` and ``refusal``: no arrays at all;
* signed claims (the reply's own, catch-up and resent ones), when the policy pins the site's key
  and claim log (:class:`ClaimPins`): resent claims are byte for byte entries of the site's log;
  the claims a reply adds continue the log from its last entry, name the site's key and carry
  exactly the signature the site's key gives them. Their hashes, key id and signature are free
  hex/base64, exempt from the text rules, so unpinned they could carry anything.

A blocked message raises :class:`EgressBlockedError` and is logged with the rule it broke, never
with its content.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from agent.guard.strings import find_identifying_text
from protocols import messages as m
from protocols.errors import BadInputError, EgressBlockedError, MessageSchemaError
from protocols.ledger import CLAIM_DOMAIN, SignedClaim
from protocols.signing import SigningKey
from protocols.tasks import Task

log = logging.getLogger(__name__)

MAX_METRICS = 64
MAX_TOTAL_ARRAY_BYTES = 256 * 1024 * 1024
SAMPLES_ARRAY = "samples"
AVERAGES_ARRAY = "images"
_SHA_FIELDS = frozenset({"weights_sha256", "samples_sha256", "images_sha256", "start_weights_sha256"})
# Models of these tasks are trained without DP for use at the site only (k-SALSA's StyleGAN):
# their weights never leave, whatever plan a request carries.
SITE_ONLY_TASKS = frozenset({Task.STYLEGAN_LOCAL})


@dataclasses.dataclass(frozen=True)
class EgressPolicy:
    """What the guard allows for one reply, derived from the request and the site's data.

    ``expected_weights`` maps weight name to (shape, dtype name) from the planned architecture;
    ``synthetic_patch_size`` is S for synthesize replies; ``forbidden_strings`` holds site-private
    names (patient keys, source folder names); ``real_fingerprints`` holds :func:`real_fingerprints`
    of the site's real patches.
    """

    expected_weights: Mapping[str, tuple[tuple[int, ...], str]] | None = None
    synthetic_patch_size: int | None = None
    forbidden_strings: frozenset[str] = frozenset()
    real_fingerprints: frozenset[str] = frozenset()
    blocked_log: Path | None = None
    site_min_k: int | None = None  # k-SALSA releases: the site's own minimum k
    # Train replies: weights_sha256 of the weights the request carried (None: none were). A digest
    # field is 256 free bits; pinning it to the request's weights keeps it from carrying anything else.
    start_weights_sha256: str | None = None
    # Replies with signed claims: the site's key and claim log before the reply (None: claims are
    # checked by the text rules only). See _check_claim_chain.
    claim_pins: "ClaimPins | None" = None

    @staticmethod
    def weights_spec(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
        """The (shape, dtype) spec of a reference weight dict (e.g. ``agent.models.initial_weights``)."""
        return {k: (tuple(v.shape), str(v.dtype)) for k, v in weights.items()}


@dataclasses.dataclass(frozen=True)
class ClaimPins:
    """What a site's claims may be: built from the site's own key and claim log, never from a reply.

    ``logged`` holds the sha256 of every logged claim's canonical bytes, ``log_head`` the last
    logged claim's hash (``protocols.ledger.GENESIS`` for an empty log). The guard holds the
    signing key because Ed25519 signs deterministically (RFC 8032): re-signing a claim and comparing
    is the only check that also pins the signature's nonce half, 256 bits a signer could choose.
    """

    key: SigningKey
    log_head: str
    logged: frozenset[str]

    @staticmethod
    def digest(claim: bytes) -> str:
        """The digest ``logged`` holds for a claim's canonical bytes."""
        return hashlib.sha256(claim).hexdigest()


def real_fingerprints(images: np.ndarray) -> frozenset[str]:
    """sha256 of each real patch's float32 image bytes (N x S x S): detects byte-exact copies."""
    arr = np.ascontiguousarray(images, dtype=np.float32)
    return frozenset(hashlib.sha256(arr[i].tobytes()).hexdigest() for i in range(arr.shape[0]))


def check_outgoing(envelope: m.Envelope, policy: EgressPolicy) -> None:
    """Raise unless ``envelope`` may leave the site under ``policy``.

    Raises
    ------
    EgressBlockedError
        Naming every rule the envelope breaks (the message is then not sent; the caller sends a
        refusal instead). The event is logged and, if ``policy.blocked_log`` is set, appended there.
    """
    problems = _problems(envelope, policy)
    if not problems:
        return
    kind = getattr(envelope.message, "KIND", type(envelope.message).__name__)
    for p in problems:
        log.warning("egress blocked (%s): %s", kind, p)
    if policy.blocked_log is not None:
        _append_blocked(policy.blocked_log, kind, problems)
    raise EgressBlockedError(
        f"outgoing {kind} blocked by the egress guard: {'; '.join(problems[:5])}. Only DP weights of the "
        "planned model, aggregate metrics, planned synthetic samples and signed claims may leave the site"
    )


def _problems(env: m.Envelope, policy: EgressPolicy) -> list[str]:
    msg = env.message
    if type(msg) not in m.REPLIES.values():
        return [f"{type(msg).__name__} is not a reply message type"]
    problems: list[str] = []
    try:  # re-validate from the wire form: catches objects mutated behind the frozen dataclass
        type(msg).from_config(msg.to_config())
    except MessageSchemaError as exc:
        problems.append(f"body does not validate: {exc}")
    problems += _check_strings(msg, policy)
    problems += _check_metrics(env.metrics, policy)
    problems += _check_claim(getattr(msg, "claim", None), policy, reply=msg)
    for prior in getattr(msg, "prior_claims", None) or ():
        problems += _check_claim(prior, policy)
    problems += _check_claim_chain(msg, policy)
    total = sum(a.nbytes for a in env.arrays.values())
    if total > MAX_TOTAL_ARRAY_BYTES:
        problems.append(f"arrays total {total} bytes, more than {MAX_TOTAL_ARRAY_BYTES}")
    if isinstance(msg, m.TrainReply):
        problems += _check_weights(msg, env.arrays, policy)
    elif isinstance(msg, m.SynthesizeReply):
        problems += _check_samples(msg, env.arrays, policy)
    elif isinstance(msg, m.KsalsaReply):
        problems += _check_averages(msg, env.arrays, policy)
    elif env.arrays:
        problems.append(f"a {msg.KIND} may not carry arrays, got {len(env.arrays)}")
    return problems


def _check_strings(msg: m.WireMessage, policy: EgressPolicy) -> list[str]:
    out = []
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, str) and f.name not in _SHA_FIELDS:
                rule = find_identifying_text(v, forbidden=policy.forbidden_strings)
                if rule:
                    out.append(f"field {f.name!r} {rule}")
    return out


def _check_metrics(metrics: Mapping[str, float], policy: EgressPolicy) -> list[str]:
    out = []
    if len(metrics) > MAX_METRICS:
        out.append(f"{len(metrics)} metrics, at most {MAX_METRICS} aggregate metrics allowed")
    for key in metrics:
        rule = find_identifying_text(key, forbidden=policy.forbidden_strings)
        if rule:
            out.append(f"metric name {rule}")
    return out


def _check_claim(claim: bytes | None, policy: EgressPolicy, *, reply: m.WireMessage | None = None) -> list[str]:
    """A claim must be a JSON object whose text fields pass the string rules (digests excepted).

    Digests are exempt from the string rules because they are free hex; so the digests of the
    claim describing ``reply`` (artifact hashes, the starting model) must be those of this reply.
    Prior claims were pinned when they first left.
    """
    if claim is None:
        return []
    try:
        parsed = json.loads(claim.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ["claim is not UTF-8 JSON (signed claims are canonical JSON)"]
    if not isinstance(parsed, dict):
        return ["claim is not a JSON object"]
    out = []
    for path, text in _claim_strings(parsed, ""):
        if _is_digest_field(path):
            continue
        rule = find_identifying_text(text, forbidden=policy.forbidden_strings)
        if rule:
            out.append(f"claim field {path!r} {rule}")
    if reply is not None:
        out += _check_claim_digests(parsed, reply, policy)
    return out


def _check_claim_digests(claim: dict, reply: m.WireMessage, policy: EgressPolicy) -> list[str]:
    out = []
    digest = next((getattr(reply, f) for f in sorted(_SHA_FIELDS - {"start_weights_sha256"}) if hasattr(reply, f)), None)
    artifacts = claim.get("artifacts")
    if isinstance(artifacts, list) and [a.get("sha256") if isinstance(a, dict) else a for a in artifacts] != [digest]:
        out.append("claim artifacts do not name exactly the release this reply carries")
    if isinstance(reply, m.TrainReply) and "start_weights_sha256" in claim \
            and claim["start_weights_sha256"] != policy.start_weights_sha256:
        out.append("claim start_weights_sha256 is not the digest of the weights the request carried")
    return out


def _check_claim_chain(msg: m.WireMessage, policy: EgressPolicy) -> list[str]:
    """The reply's claims (resent, catch-up, its own; oldest first) are the site's log and its continuation.

    With ``policy.claim_pins``: claims that are in the site's log (byte for byte) come first; the
    rest, which this reply adds, continue the log from its last entry as one hash chain, name the
    site's key and carry the signature that key gives them. A reply's own claim is one it adds; a
    reply without one (a refusal) may only resend logged claims. So nothing in ``site_prev``,
    ``key_id`` or a signature, exempt from the text rules, is of the site's (or a bug's) choosing.
    """
    pins = policy.claim_pins
    own = getattr(msg, "claim", None)
    raw = [*(getattr(msg, "prior_claims", None) or ()), *(() if own is None else (own,))]
    if pins is None or not raw:
        return []
    try:
        claims = [SignedClaim.from_bytes(c) for c in raw]
    except BadInputError as exc:
        return [f"a claim is not a valid signed claim: {exc}"]
    hashes = [c.claim.claim_hash for c in claims]
    if any(c.claim.site_prev != h for c, h in zip(claims[1:], hashes)):
        return ["the claims do not form one hash chain (a site_prev is not its predecessor's hash)"]
    in_log = [ClaimPins.digest(c) in pins.logged for c in raw]
    old = in_log.index(False) if False in in_log else len(in_log)
    new = claims[old:]
    if own is not None and in_log[-1]:
        return ["the reply's claim is already in the site's claim log (a reply's own claim is new)"]
    if new and new[0].claim.site_seq < len(pins.logged):
        return [f"claim {new[0].claim.site_seq} differs from the site's logged claim (a resent claim is resent byte for byte)"]
    if any(in_log[old:]):
        return ["a claim of the site's log follows a new claim"]
    if new and own is None:
        return ["a reply without its own claim may only resend claims of the site's log"]
    if new and new[0].claim.site_prev != pins.log_head:
        return ["the claims do not continue the site's claim log from its last entry"]
    if [c.claim.site_seq for c in new] != list(range(len(pins.logged), len(pins.logged) + len(new))):
        return ["the new claims do not carry the next sequence numbers of the site's claim log"]
    out = []
    if any(c.claim.key_id != pins.key.key_id for c in new):
        out.append("a new claim names another key than the site's ledger key")
    elif any(c.signature != pins.key.sign(domain=CLAIM_DOMAIN, payload=c.claim.canonical) for c in new):
        out.append("a new claim's signature is not the one the site's ledger key gives it")
    return out


def _claim_strings(node: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + "." + str(k), str(k)
            yield from _claim_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _claim_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _is_digest_field(path: str) -> bool:
    # Hashes, signatures and public keys are hex/base64 by design; only their *values* are exempt.
    leaf = path.rsplit(".", 1)[-1].split("[", 1)[0]
    return any(t in leaf for t in ("sha256", "hash", "signature", "public_key", "key_id", "digest", "prev"))


def _check_weights(msg: m.TrainReply, arrays: Mapping[str, np.ndarray], policy: EgressPolicy) -> list[str]:
    if Task(msg.task) in SITE_ONLY_TASKS:
        return [f"task {Task(msg.task).value} trains a site-only model (no DP): its weights may never leave the site"]
    if policy.expected_weights is None:
        return ["no weight plan given for a train reply (weights are only allowed against a plan)"]
    out = []
    expected = policy.expected_weights
    extra = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays))
    if extra:
        out.append(f"{len(extra)} array(s) not in the planned model")  # names not quoted: they could be anything
    if missing:
        out.append(f"{len(missing)} planned weight(s) missing, e.g. {missing[0][:40]!r}")
    for name in sorted(set(arrays) & set(expected)):
        shape, dtype = expected[name]
        arr = arrays[name]
        if tuple(arr.shape) != tuple(shape) or str(arr.dtype) != dtype:
            out.append(f"weight {name!r} is {tuple(arr.shape)} {arr.dtype}, planned {tuple(shape)} {dtype}")
        elif arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            out.append(f"weight {name!r} holds NaN or infinity")
    if not out and m.weights_sha256(arrays) != msg.weights_sha256:
        out.append("weights_sha256 does not match the weights carried")
    if msg.start_weights_sha256 != policy.start_weights_sha256:
        out.append("start_weights_sha256 is not the digest of the weights the request carried")
    return out


def _check_samples(msg: m.SynthesizeReply, arrays: Mapping[str, np.ndarray], policy: EgressPolicy) -> list[str]:
    if set(arrays) != {SAMPLES_ARRAY}:
        return [f"a synthesize reply carries exactly one array {SAMPLES_ARRAY!r}, got {len(arrays)} array(s)"]
    s = policy.synthetic_patch_size
    if s is None:
        return ["no synthetic patch size given (samples are only allowed against a query)"]
    arr = arrays[SAMPLES_ARRAY]
    if arr.shape != (msg.count, 2, s, s) or arr.dtype != np.float32:
        return [f"samples are {arr.shape} {arr.dtype}, expected ({msg.count}, 2, {s}, {s}) float32"]
    out = []
    if not np.all(np.isfinite(arr)) or arr[:, 0].min() < -1.0 or arr[:, 0].max() > 1.0:
        out.append("sample image channel is outside the generator range [-1, 1]")
    if not np.all((arr[:, 1] == 0.0) | (arr[:, 1] == 1.0)):
        out.append("sample label channel is not a thresholded {0, 1} mask")
    if policy.real_fingerprints:
        copies = len(real_fingerprints(arr[:, 0]) & policy.real_fingerprints)
        if copies:
            out.append(f"{copies} sample(s) are byte-exact copies of real patches")
    if not out and m.array_sha256(arr) != msg.samples_sha256:
        out.append("samples_sha256 does not match the samples carried")
    return out


def _check_averages(msg: m.KsalsaReply, arrays: Mapping[str, np.ndarray], policy: EgressPolicy) -> list[str]:
    """k-SALSA: one uint8 RGB array ``images`` with one image per group, each group >= the site's min k."""
    if policy.site_min_k is None:
        return ["no site minimum k given (k-anonymous releases are only allowed against the site policy)"]
    out = []
    if msg.min_k < policy.site_min_k or msg.k < policy.site_min_k:
        out.append(f"release uses k = {msg.k} (min_k {msg.min_k}) below the site's privacy.min_k = {policy.site_min_k}")
    if set(arrays) != {AVERAGES_ARRAY}:
        return out + [f"a k-SALSA reply carries exactly one array {AVERAGES_ARRAY!r}, got {len(arrays)} array(s)"]
    arr = arrays[AVERAGES_ARRAY]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != msg.count or arr.shape[3] != 3:
        return out + [f"images are {arr.shape} {arr.dtype}, expected ({msg.count}, H, W, 3) uint8"]
    if not (8 <= arr.shape[1] <= 4096 and 8 <= arr.shape[2] <= 4096):
        out.append(f"image size {arr.shape[1]}x{arr.shape[2]} is outside 8..4096 pixels")
    if not out and m.array_sha256(arr) != msg.images_sha256:
        out.append("images_sha256 does not match the images carried")
    return out


def _append_blocked(path: Path, kind: str, problems: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": dt.datetime.now(dt.timezone.utc).isoformat(), "kind": kind, "rules": problems})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
