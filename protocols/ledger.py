"""The privacy-ledger record format: site claims, signed claims and countersigned ledger entries.

A *claim* is what one site says it released in one round and at what privacy cost. The site signs
it (:func:`sign_claim`); the coordinator checks it, wraps it in a *ledger entry* with a global
sequence number, the hash of the previous entry and its receipt time, countersigns the entry, and
appends one canonical JSON line per entry to an append-only file.

Invariants (checked by ``coordinator.ledger`` on append and ``coordinator.audit`` on verify):

- Every signed or hashed byte string is :func:`protocols.canonical.encode` of a ``to_dict()``,
  prefixed by a domain tag: site signatures cover ``CLAIM_DOMAIN``, countersignatures
  ``COUNTERSIGN_DOMAIN``, the chain uses ``ENTRY_HASH_DOMAIN`` (entry hash = SHA-256 over the
  tagged canonical line) and each site's own claim chain ``CLAIM_HASH_DOMAIN``.
- ``from_dict`` rejects unknown and missing fields and wrong types (``int`` where a ``float`` is
  due and vice versa, ``bool`` for numbers), so ``to_dict(from_dict(d)) == d`` for every accepted
  ``d`` and a signature can only ever cover one meaning.
- ``schema`` is in every claim and entry; readers refuse versions they do not know. Claims are
  written at :data:`CLAIM_SCHEMA` 2 and read at 1 and 2; entries, signed-claim wrappers and the head
  stay at :data:`LEDGER_SCHEMA` 1 (their layout did not change).
- Claim schema 2 adds ``start_weights_sha256``: for a train claim, the canonical digest
  (:func:`protocols.messages.weights_sha256`) of the weights the round started from, as received from
  the coordinator; null when the site initialised the model itself (from the round's seed) and for
  every other claim. An auditor links round 1 of a run to the model it was declared to start from
  (e.g. one pretrained on public data), and checks that every site of a round started from the same
  model. Schema-1 claims have no such field and read back as null.
- Per site: ``site_seq`` counts 0, 1, 2, ... and ``site_prev`` is the claim hash of the site's
  previous claim (``GENESIS`` for the first), so the site's copy of its claims proves omissions.
- Per ledger: ``seq`` counts 0, 1, 2, ... and ``prev`` is the entry hash of the previous entry
  (``GENESIS`` for the first).
- Epsilon (``epsilon`` = increase of the site's cumulative epsilon for ``dataset`` caused by this
  claim; ``cumulative_epsilon`` = epsilon of composing every DP-SGD claim of that site and dataset
  so far, at the mechanism's ``delta``) depends on the mechanism kind:
  ``dp-sgd``: finite, >= 0; ``none`` (non-DP baseline): both are infinite, written ``"inf"``
  (it does not enter the DP composition; later DP-SGD claims on that dataset are refused);
  ``k-anonymity`` and ``post-processing``: ``epsilon`` is 0.0 (no new DP cost; the k-anonymity
  guarantee is in ``kanon``) and ``cumulative_epsilon`` repeats the previous value.

Python API: :func:`make_claim` -> :func:`sign_claim` -> :meth:`SignedClaim.to_bytes` (transport,
e.g. in a Flower ConfigRecord) -> :meth:`SignedClaim.from_bytes` -> coordinator.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import functools
import hashlib
import math
import re
from typing import Any, Mapping

from protocols.canonical import decode, encode, tagged
from protocols.errors import BadInputError, SignatureError
from protocols.signing import SigningKey, VerifyKey
from protocols.tasks import PrivacyUnit, Task

LEDGER_SCHEMA = 1  # entries, signed-claim wrappers, the signed head
CLAIM_SCHEMA = 2  # claims written now (see the module docstring)
_READABLE_CLAIM_SCHEMAS = (1, 2)
CLAIM_DOMAIN = b"anonfed/site-claim/v1"
COUNTERSIGN_DOMAIN = b"anonfed/ledger-countersign/v1"
ENTRY_HASH_DOMAIN = b"anonfed/ledger-entry/v1"
CLAIM_HASH_DOMAIN = b"anonfed/site-claim-hash/v1"
GENESIS = "0" * 64
INFINITY = "inf"  # canonical spelling of epsilon = infinity (non-DP baselines)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # run ids, dataset ids, artifact names
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_B64SIG = re.compile(r"^[A-Za-z0-9+/]{86}==$")
_DP_TASKS = frozenset({Task.DPGAN, Task.STYLEGAN_DP})


class MechanismKind(str, enum.Enum):
    """How a release is protected."""

    DP_SGD = "dp-sgd"
    NONE = "none"  # no privacy guarantee at all (non-DP GAN baselines): epsilon = infinity
    K_ANONYMITY = "k-anonymity"
    POST_PROCESSING = "post-processing"  # sampling from an already released DP model


class ArtifactKind(str, enum.Enum):
    WEIGHTS = "weights"
    SYNTHETIC = "synthetic"


# The exact member sets of each record (frozen once: the auditor reads 10^5 records).
_DP_SGD_FIELDS = frozenset({"kind", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta", "unit", "accountant"})
_PLAIN_FIELDS = frozenset({"kind"})
_KANON_FIELDS = frozenset({"k", "min_k", "cluster_sizes"})
_ARTIFACT_FIELDS = frozenset({"name", "kind", "sha256", "size"})
_SIGNED_CLAIM_FIELDS = frozenset({"schema", "claim", "signature"})
_TASKS = {t.value: t for t in Task}
_ARTIFACT_KINDS = {k.value: k for k in ArtifactKind}


def utc_now() -> str:
    """Current UTC time in the ledger's one time format (microseconds, ``Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- strict field readers -------------------------------------------------------------------------
def _fields(d: Any, where: str, required: frozenset[str]) -> Mapping[str, Any]:
    if type(d) is dict and d.keys() == required:  # the auditor's hot path: no set is built
        return d
    if not isinstance(d, dict):
        raise BadInputError(f"{where}: expected an object, got {type(d).__name__}")
    keys = set(d)
    if keys != required:
        unknown, missing = sorted(keys - required), sorted(required - keys)
        raise BadInputError(f"{where}: unknown fields {unknown}, missing fields {missing}; expected exactly {sorted(required)}")
    return d


def _int(v: Any, where: str, *, minimum: int = 0) -> int:
    if type(v) is not int or v < minimum:
        raise BadInputError(f"{where}: expected an integer >= {minimum}, got {v!r}")
    return v


def _float(v: Any, where: str, *, low: float, high: float, low_open: bool = False) -> float:
    if type(v) is not float or not (low < v if low_open else low <= v) or not v <= high:
        bound = f"{'(' if low_open else '['}{low}, {high}]"
        raise BadInputError(f"{where}: expected a float in {bound}, got {v!r}")
    return v


def _str(v: Any, where: str, pattern: re.Pattern[str], rule: str) -> str:
    if type(v) is not str or not pattern.match(v):
        raise BadInputError(f"{where}: expected {rule}, got {v!r}")
    return v


def _eps_out(v: float) -> float | str:
    return INFINITY if v == math.inf else v


def _eps_in(v: Any, where: str) -> float:
    if v == INFINITY and type(v) is str:
        return math.inf
    return _float(v, where, low=0.0, high=1e6)


def _as_float(v: Any, where: str) -> float:
    """Accept ints in constructors (normalised to float) but never bools."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadInputError(f"{where}: expected a number, got {v!r}")
    return float(v)


# -- parts of a claim -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DpSgdMechanism:
    """One DP-SGD segment: ``steps`` Poisson-sampled Gaussian steps at one (q, sigma).

    ``accountant`` names what computed the recorded epsilon (e.g. ``opacus-prv``, ``opacus-rdp``);
    the auditor recomputes with a different implementation.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    unit: PrivacyUnit
    accountant: str

    kind = MechanismKind.DP_SGD

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "sample_rate", "max_grad_norm", "delta"):
            object.__setattr__(self, name, _as_float(getattr(self, name), f"mechanism.{name}"))
        _float(self.noise_multiplier, "mechanism.noise_multiplier", low=0.0, high=1e4, low_open=True)
        _float(self.sample_rate, "mechanism.sample_rate", low=0.0, high=1.0, low_open=True)
        _int(self.steps, "mechanism.steps", minimum=1)
        _float(self.max_grad_norm, "mechanism.max_grad_norm", low=0.0, high=1e6, low_open=True)
        _float(self.delta, "mechanism.delta", low=0.0, high=0.1, low_open=True)
        if not isinstance(self.unit, PrivacyUnit):
            raise BadInputError(f"mechanism.unit: expected a PrivacyUnit, got {self.unit!r}")
        _str(self.accountant, "mechanism.accountant", _NAME, "an accountant name like opacus-prv")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "unit": self.unit.value,
            "accountant": self.accountant,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "DpSgdMechanism":
        f = _fields(d, "mechanism", _DP_SGD_FIELDS)
        for name in ("noise_multiplier", "sample_rate", "max_grad_norm", "delta"):
            if type(f[name]) is not float:
                raise BadInputError(f"mechanism.{name}: expected a float, got {f[name]!r}")
        if type(f["steps"]) is not int or type(f["unit"]) is not str or type(f["accountant"]) is not str:
            raise BadInputError(f"mechanism: steps must be an integer, unit and accountant strings; got {f['steps']!r}, "
                                f"{f['unit']!r}, {f['accountant']!r}")
        # Types are exact now, so equal tuples are equal mechanisms: a site's claims repeat one
        # mechanism round after round, and the auditor validates each distinct one once.
        return _dp_mechanism(f["noise_multiplier"], f["sample_rate"], f["steps"], f["max_grad_norm"], f["delta"],
                             f["unit"], f["accountant"])


@functools.lru_cache(maxsize=4096)
def _dp_mechanism(noise_multiplier: float, sample_rate: float, steps: int, max_grad_norm: float, delta: float,
                  unit: str, accountant: str) -> DpSgdMechanism:
    try:
        privacy_unit = PrivacyUnit(unit)
    except ValueError as exc:
        raise BadInputError(f"mechanism.unit: expected one of {[u.value for u in PrivacyUnit]}, got {unit!r}") from exc
    return DpSgdMechanism(noise_multiplier, sample_rate, steps, max_grad_norm, delta, privacy_unit, accountant)


@dataclasses.dataclass(frozen=True)
class PlainMechanism:
    """A release without a DP-SGD history: ``none``, ``k-anonymity`` or ``post-processing``."""

    kind: MechanismKind

    def __post_init__(self) -> None:
        if not isinstance(self.kind, MechanismKind) or self.kind is MechanismKind.DP_SGD:
            raise BadInputError(f"mechanism.kind: a PlainMechanism cannot be {self.kind!r}; use DpSgdMechanism")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value}

    @classmethod
    def from_dict(cls, d: Any) -> "PlainMechanism":
        f = _fields(d, "mechanism", _PLAIN_FIELDS)
        try:
            return cls(MechanismKind(f["kind"]))
        except ValueError as exc:
            raise BadInputError(f"mechanism.kind: unknown kind {f['kind']!r}") from exc


Mechanism = DpSgdMechanism | PlainMechanism


def _mechanism_from_dict(d: Any) -> Mechanism:
    if isinstance(d, dict) and d.get("kind") == MechanismKind.DP_SGD.value:
        return DpSgdMechanism.from_dict(d)
    return PlainMechanism.from_dict(d)


@dataclasses.dataclass(frozen=True)
class KAnonRelease:
    """A k-anonymous release: every output averages ``cluster_sizes[i]`` distinct patients.

    Policy (``k >= min_k``, every size >= k) is *not* enforced here: the coordinator refuses and
    the auditor reports violations, so a bad claim can still be recorded as evidence.
    """

    k: int
    min_k: int
    cluster_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        _int(self.k, "kanon.k", minimum=1)
        _int(self.min_k, "kanon.min_k", minimum=1)
        object.__setattr__(self, "cluster_sizes", tuple(self.cluster_sizes))
        if not self.cluster_sizes:
            raise BadInputError("kanon.cluster_sizes: expected at least one cluster")
        for i, n in enumerate(self.cluster_sizes):
            _int(n, f"kanon.cluster_sizes[{i}]", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "min_k": self.min_k, "cluster_sizes": list(self.cluster_sizes)}

    @classmethod
    def from_dict(cls, d: Any) -> "KAnonRelease":
        f = _fields(d, "kanon", _KANON_FIELDS)
        if not isinstance(f["cluster_sizes"], list):
            raise BadInputError("kanon.cluster_sizes: expected a list of integers")
        return cls(f["k"], f["min_k"], tuple(f["cluster_sizes"]))


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One released file: its name, kind, size and SHA-256 (the store names files by the hash)."""

    name: str
    kind: ArtifactKind
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _str(self.name, "artifacts[].name", _NAME, "a file name of letters, digits, '.', '_', '-'")
        if not isinstance(self.kind, ArtifactKind):
            raise BadInputError(f"artifacts[].kind: expected an ArtifactKind, got {self.kind!r}")
        _str(self.sha256, "artifacts[].sha256", _HEX64, "64 lowercase hex digits")
        _int(self.size, "artifacts[].size")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, d: Any) -> "Artifact":
        f = _fields(d, "artifacts[]", _ARTIFACT_FIELDS)
        kind = _ARTIFACT_KINDS.get(f["kind"]) if type(f["kind"]) is str else None
        if kind is None:
            raise BadInputError(f"artifacts[].kind: unknown kind {f['kind']!r}")
        return cls(f["name"], kind, f["sha256"], f["size"])


# -- the claim ------------------------------------------------------------------------------------
_CLAIM_FIELDS_V1 = frozenset({
    "schema", "run_id", "round", "site", "site_seq", "site_prev", "key_id", "task", "dataset",
    "mechanism", "epsilon", "cumulative_epsilon", "kanon", "artifacts", "time",
})
_CLAIM_FIELDS = {1: _CLAIM_FIELDS_V1, 2: _CLAIM_FIELDS_V1 | {"start_weights_sha256"}}


@dataclasses.dataclass(frozen=True)
class SiteClaim:
    """What one site released in one round and at what privacy cost (see module docstring)."""

    run_id: str
    round: int
    site: str
    site_seq: int
    site_prev: str
    key_id: str
    task: Task
    dataset: str
    mechanism: Mechanism
    epsilon: float
    cumulative_epsilon: float
    kanon: KAnonRelease | None
    artifacts: tuple[Artifact, ...]
    time: str
    start_weights_sha256: str | None = None
    schema: int = CLAIM_SCHEMA

    def __post_init__(self) -> None:
        _check_claim_schema(self.schema)
        if self.start_weights_sha256 is not None:
            if self.schema < 2:
                raise BadInputError("claim.start_weights_sha256: not part of claim schema 1")
            _str(self.start_weights_sha256, "claim.start_weights_sha256", _HEX64, "64 lowercase hex digits or null")
        _str(self.run_id, "claim.run_id", _NAME, "a run id of letters, digits, '.', '_', '-'")
        _int(self.round, "claim.round")
        _str(self.site, "claim.site", _SITE_ID, "a site id (2-63 lowercase letters, digits, '-')")
        _int(self.site_seq, "claim.site_seq")
        _str(self.site_prev, "claim.site_prev", _HEX64, "64 lowercase hex digits")
        _str(self.key_id, "claim.key_id", _KEY_ID, "32 lowercase hex digits")
        if not isinstance(self.task, Task):
            raise BadInputError(f"claim.task: expected a Task, got {self.task!r}")
        _str(self.dataset, "claim.dataset", _NAME, "a dataset id of letters, digits, '.', '_', '-'")
        if not isinstance(self.mechanism, (DpSgdMechanism, PlainMechanism)):
            raise BadInputError(f"claim.mechanism: expected DpSgdMechanism or PlainMechanism, got {self.mechanism!r}")
        for name in ("epsilon", "cumulative_epsilon"):
            v = getattr(self, name)
            if type(v) is not float:  # constructors may pass ints; stored as float
                v = _as_float(v, f"claim.{name}")
                object.__setattr__(self, name, v)
            if not (v == math.inf or 0.0 <= v <= 1e6):
                raise BadInputError(f"claim.{name}: expected 0 <= epsilon <= 1e6 or infinity, got {v!r}")
        if self.kanon is not None and not isinstance(self.kanon, KAnonRelease):
            raise BadInputError(f"claim.kanon: expected KAnonRelease or None, got {self.kanon!r}")
        if type(self.artifacts) is not tuple:
            object.__setattr__(self, "artifacts", tuple(self.artifacts))
        if not all(isinstance(a, Artifact) for a in self.artifacts):
            raise BadInputError("claim.artifacts: expected Artifact items")
        _str(self.time, "claim.time", _TIME, "UTC time YYYY-MM-DDTHH:MM:SS.ffffffZ")
        self._check_kind_rules()

    def _check_kind_rules(self) -> None:
        kind = self.mechanism.kind
        eps, cum = self.epsilon, self.cumulative_epsilon
        if kind is MechanismKind.DP_SGD:
            if self.task not in _DP_TASKS:
                raise BadInputError(f"claim: mechanism dp-sgd needs task in {sorted(t.value for t in _DP_TASKS)}, got {self.task.value}")
            if not (math.isfinite(eps) and math.isfinite(cum)) or eps > cum:
                raise BadInputError(f"claim: dp-sgd needs finite 0 <= epsilon <= cumulative_epsilon, got {eps} and {cum}")
        elif kind is MechanismKind.NONE:
            if eps != math.inf or cum != math.inf:
                raise BadInputError(f"claim: mechanism none (no DP) must record epsilon = cumulative_epsilon = inf, got {eps} and {cum}")
        elif eps != 0.0:
            raise BadInputError(f"claim: mechanism {kind.value} adds no DP cost: epsilon must be 0.0, got {eps}")
        if kind is MechanismKind.K_ANONYMITY:
            if self.task is not Task.KSALSA or self.kanon is None:
                raise BadInputError("claim: mechanism k-anonymity needs task ksalsa and a kanon release record")
        elif self.kanon is not None:
            raise BadInputError(f"claim: a kanon record is only allowed with mechanism k-anonymity, not {kind.value}")
        if self.start_weights_sha256 is not None and kind is not MechanismKind.DP_SGD:
            raise BadInputError(f"claim: only a training (dp-sgd) claim has starting weights, not {kind.value}")

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": self.schema,
            "run_id": self.run_id,
            "round": self.round,
            "site": self.site,
            "site_seq": self.site_seq,
            "site_prev": self.site_prev,
            "key_id": self.key_id,
            "task": self.task.value,
            "dataset": self.dataset,
            "mechanism": self.mechanism.to_dict(),
            "epsilon": _eps_out(self.epsilon),
            "cumulative_epsilon": _eps_out(self.cumulative_epsilon),
            "kanon": None if self.kanon is None else self.kanon.to_dict(),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "time": self.time,
        }
        if self.schema >= 2:  # a schema-1 claim must re-encode to exactly the bytes its site signed
            d["start_weights_sha256"] = self.start_weights_sha256
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "SiteClaim":
        schema = d.get("schema") if isinstance(d, dict) else None
        if isinstance(d, dict):  # otherwise _fields says what is wrong: not an object
            _check_claim_schema(schema)
        f = _fields(d, "claim", _CLAIM_FIELDS.get(schema, _CLAIM_FIELDS_V1))
        task = _TASKS.get(f["task"]) if type(f["task"]) is str else None
        if task is None:
            raise BadInputError(f"claim.task: unknown task {f['task']!r}")
        if not isinstance(f["artifacts"], list):
            raise BadInputError("claim.artifacts: expected a list")
        return cls(
            run_id=f["run_id"], round=f["round"], site=f["site"], site_seq=f["site_seq"], site_prev=f["site_prev"],
            key_id=f["key_id"], task=task, dataset=f["dataset"], mechanism=_mechanism_from_dict(f["mechanism"]),
            epsilon=_eps_in(f["epsilon"], "claim.epsilon"),
            cumulative_epsilon=_eps_in(f["cumulative_epsilon"], "claim.cumulative_epsilon"),
            kanon=None if f["kanon"] is None else KAnonRelease.from_dict(f["kanon"]),
            artifacts=tuple(Artifact.from_dict(a) for a in f["artifacts"]), time=f["time"],
            start_weights_sha256=f.get("start_weights_sha256"), schema=schema,
        )

    @functools.cached_property
    def canonical(self) -> bytes:
        """The canonical bytes the site signs."""
        return encode(self.to_dict())

    @functools.cached_property
    def claim_hash(self) -> str:
        """Hex SHA-256 linking the site's claims (the next claim's ``site_prev``)."""
        return hashlib.sha256(tagged(CLAIM_HASH_DOMAIN, self.canonical)).hexdigest()


def make_claim(
    *,
    run_id: str,
    round: int,
    site: str,
    site_seq: int,
    site_prev: str,
    key_id: str,
    task: Task,
    dataset: str,
    mechanism: Mechanism,
    epsilon: float,
    cumulative_epsilon: float,
    kanon: KAnonRelease | None = None,
    artifacts: tuple[Artifact, ...] = (),
    time: str | None = None,
    start_weights_sha256: str | None = None,
) -> SiteClaim:
    """Build a validated claim at :data:`CLAIM_SCHEMA` (``time`` defaults to now, UTC).

    Raises
    ------
    BadInputError
        If a field is out of range or the mechanism, task and epsilon do not fit together.
    """
    return SiteClaim(
        run_id=run_id, round=round, site=site, site_seq=site_seq, site_prev=site_prev, key_id=key_id, task=task,
        dataset=dataset, mechanism=mechanism, epsilon=epsilon, cumulative_epsilon=cumulative_epsilon, kanon=kanon,
        artifacts=tuple(artifacts), time=time or utc_now(), start_weights_sha256=start_weights_sha256,
    )


def _check_claim_schema(schema: Any) -> None:
    if type(schema) is not int or schema not in _READABLE_CLAIM_SCHEMAS:
        raise BadInputError(f"claim.schema: this anonfed reads claim schemas {list(_READABLE_CLAIM_SCHEMAS)}, "
                            f"got {schema!r}; upgrade anonfed")


@dataclasses.dataclass(frozen=True)
class SignedClaim:
    """A claim with the site's signature; transported as canonical bytes."""

    claim: SiteClaim
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {"schema": LEDGER_SCHEMA, "claim": self.claim.to_dict(), "signature": self.signature}

    def to_bytes(self) -> bytes:
        """Canonical bytes, safe to put in a Flower ConfigRecord (``.decode('utf-8')`` for str)."""
        return encode(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> "SignedClaim":
        f = _fields(d, "signed claim", _SIGNED_CLAIM_FIELDS)
        if f["schema"] != LEDGER_SCHEMA or type(f["schema"]) is not int:
            raise BadInputError(f"signed claim schema: expected {LEDGER_SCHEMA}, got {f['schema']!r}")
        _str(f["signature"], "signed claim signature", _B64SIG, "a base64 Ed25519 signature")
        return cls(SiteClaim.from_dict(f["claim"]), f["signature"])

    @classmethod
    def from_bytes(cls, data: bytes | str) -> "SignedClaim":
        """Parse transported bytes (or their UTF-8 text).

        Raises
        ------
        BadInputError
            If the bytes are not canonical or the claim is invalid.
        """
        return cls.from_dict(decode(data.encode("utf-8") if isinstance(data, str) else data))

    def verify(self, key: VerifyKey) -> None:
        """Check the site signature.

        Raises
        ------
        SignatureError
            If the key id does not match or the signature does not verify.
        """
        if self.claim.key_id != key.key_id:
            raise SignatureError(
                f"claim of site {self.claim.site} names key {self.claim.key_id} but the site's public key is {key.key_id}"
            )
        key.verify(self.signature, domain=CLAIM_DOMAIN, payload=self.claim.canonical, what=f"site signature of {self.claim.site}")


def sign_claim(claim: SiteClaim, key: SigningKey) -> SignedClaim:
    """The site's signature over ``claim``.

    Raises
    ------
    SignatureError
        If ``claim.key_id`` is not this key's id.
    """
    if claim.key_id != key.key_id:
        raise SignatureError(f"claim names key {claim.key_id} but is being signed with key {key.key_id}")
    return SignedClaim(claim, key.sign(domain=CLAIM_DOMAIN, payload=claim.canonical))


# -- the ledger entry -----------------------------------------------------------------------------
_ENTRY_FIELDS = frozenset({"schema", "seq", "prev", "received_at", "claim", "site_sig", "coordinator_key_id", "coordinator_sig"})


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One line of the ledger: a signed claim, chained and countersigned by the coordinator."""

    seq: int
    prev: str
    received_at: str
    signed: SignedClaim
    coordinator_key_id: str
    coordinator_sig: str
    schema: int = LEDGER_SCHEMA

    def __post_init__(self) -> None:
        _int(self.seq, "entry.seq")
        _str(self.prev, "entry.prev", _HEX64, "64 lowercase hex digits")
        _str(self.received_at, "entry.received_at", _TIME, "UTC time YYYY-MM-DDTHH:MM:SS.ffffffZ")
        _str(self.coordinator_key_id, "entry.coordinator_key_id", _KEY_ID, "32 lowercase hex digits")
        _str(self.coordinator_sig, "entry.coordinator_sig", _B64SIG, "a base64 Ed25519 signature")
        if self.schema != LEDGER_SCHEMA:
            raise BadInputError(f"entry.schema: this anonfed reads schema {LEDGER_SCHEMA}, got {self.schema!r}")

    @property
    def claim(self) -> SiteClaim:
        return self.signed.claim

    def unsigned_dict(self) -> dict[str, Any]:
        """Everything the countersignature covers (the entry without ``coordinator_sig``)."""
        return {
            "schema": self.schema,
            "seq": self.seq,
            "prev": self.prev,
            "received_at": self.received_at,
            "claim": self.signed.claim.to_dict(),
            "site_sig": self.signed.signature,
            "coordinator_key_id": self.coordinator_key_id,
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.unsigned_dict()
        d["coordinator_sig"] = self.coordinator_sig
        return d

    @functools.cached_property
    def unsigned_bytes(self) -> bytes:
        """Canonical bytes of :meth:`unsigned_dict` (what the countersignature covers)."""
        return encode(self.unsigned_dict())

    @functools.cached_property
    def line(self) -> bytes:
        """The canonical line as stored, without the trailing newline."""
        return encode(self.to_dict())

    @functools.cached_property
    def entry_hash(self) -> str:
        """Hex SHA-256 of the tagged line: the next entry's ``prev``."""
        return entry_hash_of(self.line)

    @classmethod
    def from_dict(cls, d: Any) -> "LedgerEntry":
        f = _fields(d, "entry", _ENTRY_FIELDS)
        if f["schema"] != LEDGER_SCHEMA or type(f["schema"]) is not int:
            raise BadInputError(f"entry.schema: this anonfed reads schema {LEDGER_SCHEMA}, got {f['schema']!r}")
        _str(f["site_sig"], "entry.site_sig", _B64SIG, "a base64 Ed25519 signature")
        signed = SignedClaim(SiteClaim.from_dict(f["claim"]), f["site_sig"])
        return cls(f["seq"], f["prev"], f["received_at"], signed, f["coordinator_key_id"], f["coordinator_sig"], f["schema"])

    @classmethod
    def from_line(cls, line: bytes) -> "LedgerEntry":
        """Parse one stored line (without its newline); the line must be canonical.

        Raises
        ------
        BadInputError
            If the line is not canonical JSON or not a valid entry.
        """
        line = bytes(line)
        entry = cls.from_dict(decode(line))
        parts = signed_parts(line)
        if parts.site_sig != entry.signed.signature or parts.coordinator_sig != entry.coordinator_sig:
            raise BadInputError("entry: signatures are not where the canonical layout puts them")
        entry.__dict__["line"] = line
        entry.signed.claim.__dict__["canonical"] = parts.claim
        entry.__dict__["unsigned_bytes"] = parts.unsigned
        return entry


@dataclasses.dataclass(frozen=True)
class SignedParts:
    """The byte strings the two signatures of a stored line cover, and the signatures."""

    claim: bytes  # what the site signed (under CLAIM_DOMAIN)
    unsigned: bytes  # what the coordinator countersigned (under COUNTERSIGN_DOMAIN)
    site_sig: str
    coordinator_sig: str


_CLAIM_OPEN = b'{"claim":'
_AFTER_CLAIM = b',"coordinator_key_id":"'
_COORD_SIG = b',"coordinator_sig":"'
_SITE_SIG = b',"site_sig":"'


def signed_parts(line: bytes) -> SignedParts:
    """Slice the signed byte strings out of a canonical ledger line, without parsing it.

    Canonical encoding is compositional and keys are sorted, so in a valid line the claim is the
    first member's value, ``coordinator_sig`` follows ``coordinator_key_id``, and ``site_sig`` is
    the last member; claim strings cannot hold a quote (validated), so each boundary is found
    unambiguously. Slicing instead of re-encoding halves the auditor's parsing time and lets
    signature workers check a line on their own. :meth:`LedgerEntry.from_line` checks the result
    against the parsed entry, and tests/protocols/test_ledger.py against re-encoding.

    Raises
    ------
    BadInputError
        If the line does not have the canonical entry layout.
    """
    end = line.find(_AFTER_CLAIM)
    cs = line.find(_COORD_SIG, end)
    ss = len(line) - len(_SITE_SIG) - 90
    if not line.startswith(_CLAIM_OPEN) or end < 0 or cs < 0 or line[ss : ss + len(_SITE_SIG)] != _SITE_SIG \
            or not line.endswith(b'"}'):
        raise BadInputError("entry: not the canonical ledger-line layout")
    cs_end = cs + len(_COORD_SIG) + 89  # 88 base64 characters and the closing quote
    return SignedParts(
        claim=line[len(_CLAIM_OPEN) : end],
        unsigned=line[:cs] + line[cs_end:],
        site_sig=line[ss + len(_SITE_SIG) : -2].decode("ascii", "replace"),
        coordinator_sig=line[cs + len(_COORD_SIG) : cs_end - 1].decode("ascii", "replace"),
    )


def entry_hash_of(line: bytes) -> str:
    """Hex SHA-256 over ``ENTRY_HASH_DOMAIN`` + NUL + the canonical line (no newline)."""
    return hashlib.sha256(tagged(ENTRY_HASH_DOMAIN, line)).hexdigest()


def countersign(
    signed: SignedClaim, *, seq: int, prev: str, key: SigningKey, received_at: str | None = None
) -> LedgerEntry:
    """The coordinator's entry for ``signed`` (call only after checking the claim)."""
    draft = LedgerEntry(seq, prev, received_at or utc_now(), signed, key.key_id, "A" * 86 + "==")
    sig = key.sign(domain=COUNTERSIGN_DOMAIN, payload=encode(draft.unsigned_dict()))
    return dataclasses.replace(draft, coordinator_sig=sig)


def verify_countersignature(entry: LedgerEntry, key: VerifyKey) -> None:
    """Check the coordinator's signature on ``entry``.

    Raises
    ------
    SignatureError
        If the key id does not match or the signature does not verify.
    """
    if entry.coordinator_key_id != key.key_id:
        raise SignatureError(f"entry {entry.seq} names coordinator key {entry.coordinator_key_id}, expected {key.key_id}")
    key.verify(entry.coordinator_sig, domain=COUNTERSIGN_DOMAIN, payload=entry.unsigned_bytes,
               what=f"coordinator countersignature of entry {entry.seq}")
