"""Every message exchanged between a site's agent and the coordinator: the wire contract.

Invariants (checked here, relied on by the egress guard and the coordinator):

* Each message is a frozen dataclass with a ``KIND`` and carries :data:`SCHEMA_VERSION`.
* Field values are restricted to :data:`SCALAR_TYPES` (declared once, here), ``None`` for optional
  fields, enums from :mod:`protocols.tasks`, and tuples of strings, integers or bytes. ``bool`` is never accepted
  where a number is expected (Flower's MetricRecord rejects it on purpose; so do we).
* Decoding rejects unknown fields, missing fields, wrong types and unknown record names.
* No message type exists that could carry raw data: arrays travel only as named model weights
  (train replies and instructions), synthetic samples (synthesize replies) or k-anonymous averages
  (k-SALSA replies); what is allowed in them is decided by the egress guard against the request.

Conversion to and from Flower records imports ``flwr`` lazily, so auditors' tools that only need
the schemas never load it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import math
import re
import typing
from typing import Any, ClassVar, Mapping

import numpy as np

from protocols.errors import MessageSchemaError
from protocols.tasks import PrivacyUnit, Task

SCHEMA_NAME = "anonfed.messages"
# 2: train/synthesize/k-SALSA requests say how many of the site's claims the ledger holds
#    (ledger_claims_held) and replies may carry the claims it lacks (prior_claims). A side that
#    reads 1 would refuse those fields as unknown; the version makes the refusal say why.
# 3: a refusal with code "ledger-behind" may carry prior_claims (a site whose claim log is further
#    ahead of the ledger than one reply can carry sends its earlier claims instead of working).
# 4: a train reply states the digest of the weights its round started from (start_weights_sha256;
#    null when the site initialised the model from the round's seed); the site signs it in its claim.
# 5: a status reply states the site's k-SALSA policy (min_k, ksalsa_groups), so a coordinator can
#    see before a release round which k a site accepts and how it groups patients.
SCHEMA_VERSION = 5

#: The only scalar value types any message field may hold (bool is checked before int).
SCALAR_TYPES: tuple[type, ...] = (bool, int, float, str, bytes)

#: Record names inside a Flower RecordDict; anything else is rejected on decode.
HEADER_RECORD = "header"
BODY_RECORD = "body"
ARRAYS_RECORD = "arrays"
METRICS_RECORD = "metrics"

MAX_STRING_CHARS = 2_000
MAX_LIST_ITEMS = 10_000
MAX_BYTES = 64 * 1024
_METRIC_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -- base class ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WireMessage:
    """Base of every message: typed fields validated at construction."""

    KIND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            _check_value(type(self).KIND, f.name, getattr(self, f.name), hints[f.name])
        self.validate()

    def validate(self) -> None:
        """Message-specific rules beyond types (overridden by subclasses)."""

    def to_config(self) -> dict[str, Any]:
        """Flat ``{field: scalar}`` mapping; ``None`` fields are omitted, enums become strings."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> "WireMessage":
        """Rebuild a message from :meth:`to_config` output.

        Raises
        ------
        MessageSchemaError
            On an unknown or missing field or a value of the wrong type.
        """
        hints = _hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise MessageSchemaError(
                f"{cls.KIND}: unknown field {unknown[0]!r}; allowed fields: {', '.join(sorted(names))}"
            )
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                if not _is_optional(hints[f.name]):
                    raise MessageSchemaError(f"{cls.KIND}: required field {f.name!r} is missing")
                kwargs[f.name] = None
                continue
            kwargs[f.name] = _coerce(cls.KIND, f.name, raw[f.name], hints[f.name])
        return cls(**kwargs)


# -- coordinator -> site ---------------------------------------------------------------------------
#: Tasks a federated training round may ask for: DP only (stylegan-local weights never leave a site).
FEDERATED_TRAINING_TASKS: frozenset[Task] = frozenset({Task.DPGAN, Task.STYLEGAN_DP})


@dataclasses.dataclass(frozen=True)
class TrainInstruction(WireMessage):
    """Ask a site to run one local DP round from the weights carried alongside (none: start from ``seed``).

    ``task`` decides the model: ``dpgan`` (image+label patches; ``architecture`` is a DP-GAN
    architecture, ``patch_size`` the patch edge, ``patches_per_volume`` patches drawn per volume) or
    ``stylegan-dp`` (StyleGAN2 on fundus photographs, discriminator under DP-SGD; ``architecture``
    names a StyleGAN configuration, ``patch_size`` is its resolution and ``patches_per_volume`` caps
    the images of one patient used per step).
    """

    KIND: ClassVar[str] = "train-instruction"
    run_id: str
    round: int
    task: Task
    dataset_id: str
    architecture: str
    patch_size: int
    patches_per_volume: int
    local_steps: int
    total_planned_steps: int
    target_epsilon: float | None
    delta: float
    unit: PrivacyUnit
    expected_batch_patients: int
    max_grad_norm: float
    seed: int
    # How many of this site's claims the coordinator's ledger holds (None: no ledger). The site
    # resends the claims of its own log from that position on (replies that never arrived).
    ledger_claims_held: int | None = None

    def validate(self) -> None:
        _positive(self, "round", "patch_size", "patches_per_volume", "local_steps", "total_planned_steps")
        _positive(self, "expected_batch_patients", "max_grad_norm")
        _claims_held(self)
        if self.local_steps > self.total_planned_steps:
            raise MessageSchemaError(
                f"{self.KIND}: local_steps ({self.local_steps}) must not exceed total_planned_steps "
                f"({self.total_planned_steps})"
            )
        if self.task not in FEDERATED_TRAINING_TASKS:
            # Federated rounds are DP only: a non-DP model would make every later release epsilon = infinity.
            allowed = ", ".join(sorted(t.value for t in FEDERATED_TRAINING_TASKS))
            raise MessageSchemaError(
                f"{self.KIND}: federated training supports tasks {allowed}, got {self.task.value}; models trained "
                "without DP (stylegan-local) stay at the site and are trained there (`anonfed stylegan train`)"
            )
        if self.target_epsilon is None or not self.target_epsilon > 0:
            raise MessageSchemaError(f"{self.KIND}: a {self.task.value} round needs target_epsilon > 0")
        if not 0 < self.delta < 1:
            raise MessageSchemaError(f"{self.KIND}: delta must be in (0, 1), got {self.delta}")


@dataclasses.dataclass(frozen=True)
class SynthesizeQuery(WireMessage):
    """Ask a site for ``count`` synthetic image+label pairs from its last released model."""

    KIND: ClassVar[str] = "synthesize-query"
    run_id: str
    round: int
    count: int
    seed: int
    architecture: str
    patch_size: int
    ledger_claims_held: int | None = None  # as in TrainInstruction

    def validate(self) -> None:
        _positive(self, "count", "patch_size")
        _claims_held(self)
        if self.count > 10_000:
            raise MessageSchemaError(f"{self.KIND}: count is at most 10000 per query, got {self.count}")


#: k-SALSA release methods a coordinator may ask for (mirrors agent.ksalsa.baselines.Method).
KSALSA_METHODS = ("ksalsa", "centroid", "k-same-pixel", "k-same-eigen")
# How a site forms k-SALSA groups (agent.ksalsa.clustering): by similarity (published) or at random.
KSALSA_GROUPINGS = ("nearest", "random")


@dataclasses.dataclass(frozen=True)
class KsalsaQuery(WireMessage):
    """Ask a site for a k-anonymous release: one synthetic image per group of >= k distinct patients."""

    KIND: ClassVar[str] = "ksalsa-query"
    run_id: str
    round: int
    k: int
    method: str
    steps: int
    dataset_id: str
    ledger_claims_held: int | None = None  # as in TrainInstruction

    def validate(self) -> None:
        _claims_held(self)
        if self.k < 2:
            raise MessageSchemaError(f"{self.KIND}: k must be >= 2, got {self.k}")
        if self.method not in KSALSA_METHODS:
            raise MessageSchemaError(f"{self.KIND}: method must be one of {list(KSALSA_METHODS)}, got {self.method!r}")
        if not 0 <= self.steps <= 10_000:
            raise MessageSchemaError(f"{self.KIND}: steps must be in 0..10000, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class StatusQuery(WireMessage):
    """Ask a site who it is and what its policy and spent budget are."""

    KIND: ClassVar[str] = "status-query"
    run_id: str
    dataset_id: str


# -- site -> coordinator ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainReply(WireMessage):
    """A finished local round: DP weights (in the array record) and the privacy spent.

    ``task`` repeats the instruction's; for a federated (DP) task the mechanism fields are required.
    """

    KIND: ClassVar[str] = "train-reply"
    run_id: str
    round: int
    site_id: str
    task: Task
    num_patients: int
    weights_sha256: str
    epsilon_round: float
    epsilon_cumulative: float
    epsilon_next: float | None  # the site's cumulative epsilon after one more identical round
    delta: float
    unit: PrivacyUnit
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    max_grad_norm: float | None
    accountant: str | None
    claim: bytes | None  # the site's signed ledger claim (canonical bytes), when a ledger exists
    # Signed claims to append before ``claim``, oldest first: claims of the site's log the
    # coordinator does not hold yet, then claims for DP steps the site's accountant charged in
    # rounds that never replied. Each is checked like any claim; none describes this reply.
    prior_claims: tuple[bytes, ...] | None = None
    # weights_sha256 of the weights the instruction carried (None: none were sent; the site
    # initialised from the round's seed). The coordinator refuses a reply that names other weights.
    start_weights_sha256: str | None = None

    def validate(self) -> None:
        _site_id(self)
        _sha(self, "weights_sha256")
        if self.start_weights_sha256 is not None:
            _sha(self, "start_weights_sha256")
        _prior_claims(self)
        _positive(self, "num_patients")
        if self.task in FEDERATED_TRAINING_TASKS:
            for name in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "accountant"):
                if getattr(self, name) is None:
                    raise MessageSchemaError(
                        f"{self.KIND}: a {self.task.value} reply must state the mechanism field {name!r}"
                    )
        if self.epsilon_next is not None and self.epsilon_next < self.epsilon_cumulative:
            raise MessageSchemaError(f"{self.KIND}: epsilon_next must be >= epsilon_cumulative")
        if self.epsilon_round < 0 or self.epsilon_cumulative < self.epsilon_round:
            raise MessageSchemaError(
                f"{self.KIND}: expected 0 <= epsilon_round <= epsilon_cumulative, got "
                f"{self.epsilon_round} and {self.epsilon_cumulative}"
            )


@dataclasses.dataclass(frozen=True)
class SynthesizeReply(WireMessage):
    """Synthetic pairs (array ``samples``: count x 2 x S x S float32) and their provenance."""

    KIND: ClassVar[str] = "synthesize-reply"
    run_id: str
    round: int
    site_id: str
    count: int
    method: str
    guarantee: str
    model_round: int
    epsilon_cumulative: float
    delta: float
    unit: PrivacyUnit
    samples_sha256: str
    claim: bytes | None
    prior_claims: tuple[bytes, ...] | None = None  # claims the coordinator lacks (resent), as in TrainReply

    def validate(self) -> None:
        _site_id(self)
        _sha(self, "samples_sha256")
        _prior_claims(self)
        _positive(self, "count")


@dataclasses.dataclass(frozen=True)
class KsalsaReply(WireMessage):
    """A k-anonymous release (array ``images``: count x H x W x 3 uint8) and its group sizes.

    ``cluster_sizes[i]`` counts the distinct patients behind image ``i``; ``majority_grades[i]`` is
    the group's majority DR grade (-1 when ungraded). Every group has >= k >= min_k patients.
    """

    KIND: ClassVar[str] = "ksalsa-reply"
    run_id: str
    round: int
    site_id: str
    k: int
    min_k: int
    method: str
    count: int
    cluster_sizes: tuple[int, ...]
    majority_grades: tuple[int, ...]
    images_sha256: str
    guarantee: str
    claim: bytes | None
    prior_claims: tuple[bytes, ...] | None = None  # claims the coordinator lacks (resent), as in TrainReply

    def validate(self) -> None:
        _site_id(self)
        _sha(self, "images_sha256")
        _prior_claims(self)
        _positive(self, "count")
        if len(self.cluster_sizes) != self.count or len(self.majority_grades) != self.count:
            raise MessageSchemaError(
                f"{self.KIND}: expected {self.count} cluster sizes and grades, got {len(self.cluster_sizes)} and "
                f"{len(self.majority_grades)}"
            )
        if self.k < self.min_k:
            raise MessageSchemaError(f"{self.KIND}: k = {self.k} is below the site's min_k = {self.min_k}")
        small = [n for n in self.cluster_sizes if n < self.k]
        if small:
            raise MessageSchemaError(f"{self.KIND}: {len(small)} group(s) have fewer than k = {self.k} distinct patients")
        if any(not -1 <= g <= 4 for g in self.majority_grades):
            raise MessageSchemaError(f"{self.KIND}: majority grades must be DR grades 0-4 or -1 (ungraded)")


@dataclasses.dataclass(frozen=True)
class StatusReply(WireMessage):
    """A site's identity, policy and spent budget (no patient data)."""

    KIND: ClassVar[str] = "status-reply"
    site_id: str
    accepted_tasks: tuple[str, ...]
    max_epsilon: float
    delta: float
    unit: PrivacyUnit
    min_patients: int
    min_k: int
    ksalsa_groups: str
    epsilon_spent: float
    num_patients: int
    agent_version: str

    def validate(self) -> None:
        _site_id(self)
        if self.min_k < 2:
            raise MessageSchemaError(f"{self.KIND}: min_k must be >= 2, got {self.min_k}")
        if self.ksalsa_groups not in KSALSA_GROUPINGS:
            raise MessageSchemaError(f"{self.KIND}: ksalsa_groups must be one of {list(KSALSA_GROUPINGS)}, "
                                     f"got {self.ksalsa_groups!r}")
        for t in self.accepted_tasks:
            try:
                Task(t)
            except ValueError as exc:
                raise MessageSchemaError(f"{self.KIND}: unknown task {t!r} in accepted_tasks") from exc


@dataclasses.dataclass(frozen=True)
class Refusal(WireMessage):
    """A structured 'no': the site refused a request under its policy or failed safely."""

    KIND: ClassVar[str] = "refusal"
    run_id: str
    round: int
    site_id: str
    request_kind: str
    code: str  # short machine-readable reason, e.g. budget-exceeded, task-refused, egress-blocked
    exit_code: int
    reason: str  # human-readable, checked by the egress guard like any other string
    epsilon_cumulative: float | None
    # Only with code LEDGER_BEHIND: the oldest signed claims of the site's log that the ledger lacks,
    # for the coordinator to record; the site did no work and spent no budget for this request.
    prior_claims: tuple[bytes, ...] | None = None

    def validate(self) -> None:
        _site_id(self)
        if not re.match(r"^[a-z][a-z0-9-]{1,40}$", self.code):
            raise MessageSchemaError(f"{self.KIND}: code must be a short lowercase slug, got {self.code!r}")
        if self.prior_claims and self.code != LEDGER_BEHIND:
            raise MessageSchemaError(f"{self.KIND}: only a {LEDGER_BEHIND!r} refusal carries prior_claims, "
                                     f"not {self.code!r}")


#: Refusal code of a site that will not work for a request until the ledger has caught up with its
#: claim log (see :class:`Refusal`'s ``prior_claims``).
LEDGER_BEHIND = "ledger-behind"


REQUESTS: dict[str, type[WireMessage]] = {
    c.KIND: c for c in (TrainInstruction, SynthesizeQuery, KsalsaQuery, StatusQuery)
}
REPLIES: dict[str, type[WireMessage]] = {c.KIND: c for c in (TrainReply, SynthesizeReply, KsalsaReply, StatusReply, Refusal)}
ALL_KINDS: dict[str, type[WireMessage]] = {**REQUESTS, **REPLIES}

#: Flower message types used for each request kind.
FLOWER_MESSAGE_TYPE: dict[str, str] = {
    TrainInstruction.KIND: "train",
    SynthesizeQuery.KIND: "query.synthesize",
    KsalsaQuery.KIND: "query.ksalsa",
    StatusQuery.KIND: "query.status",
}


# -- envelopes and Flower conversion ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Envelope:
    """A message with the arrays and aggregate metrics that travel beside it."""

    message: WireMessage
    arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, arr in self.arrays.items():
            if not isinstance(name, str) or not isinstance(arr, np.ndarray):
                raise MessageSchemaError(f"{self.message.KIND}: arrays must map names to numpy arrays")
            if arr.dtype == object:
                raise MessageSchemaError(f"{self.message.KIND}: array {name!r} has dtype object (not allowed)")
        for key, value in self.metrics.items():
            if not isinstance(key, str) or not _METRIC_KEY.match(key):
                raise MessageSchemaError(f"{self.message.KIND}: metric key {key!r} is not a lowercase identifier")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MessageSchemaError(f"{self.message.KIND}: metric {key!r} must be a finite number, got {value!r}")


def to_recorddict(envelope: Envelope) -> Any:
    """Encode an envelope as a Flower ``RecordDict`` (header, body, arrays, metrics records)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    msg = envelope.message
    records: dict[str, Any] = {
        HEADER_RECORD: ConfigRecord({"schema": SCHEMA_NAME, "schema-version": SCHEMA_VERSION, "kind": msg.KIND}),
        BODY_RECORD: ConfigRecord(msg.to_config()),
    }
    if envelope.arrays:
        rec = ArrayRecord()
        for name, arr in envelope.arrays.items():
            rec[name] = Array(np.require(arr, requirements="C"))  # ascontiguousarray would make 0-d arrays 1-d
        records[ARRAYS_RECORD] = rec
    if envelope.metrics or isinstance(msg, TrainReply):
        metrics = dict(envelope.metrics)
        if isinstance(msg, TrainReply):
            metrics["num-examples"] = msg.num_patients  # what Flower strategies weight by
        records[METRICS_RECORD] = MetricRecord(metrics)
    return RecordDict(records)


def from_recorddict(content: Any, *, expect: tuple[type[WireMessage], ...] | None = None) -> Envelope:
    """Decode a Flower ``RecordDict`` produced by :func:`to_recorddict`.

    Raises
    ------
    MessageSchemaError
        If a record is unknown or missing, the schema or version differs, the kind is not one of
        ``expect``, or the body does not validate.
    """
    names = set(content.keys())
    unknown = sorted(names - {HEADER_RECORD, BODY_RECORD, ARRAYS_RECORD, METRICS_RECORD})
    if unknown:
        raise MessageSchemaError(f"message carries unknown record {unknown[0]!r}")
    if HEADER_RECORD not in names or BODY_RECORD not in names:
        raise MessageSchemaError("message lacks the 'header' or 'body' record; not an anonfed message")
    header = dict(content.config_records[HEADER_RECORD])
    if header.get("schema") != SCHEMA_NAME or header.get("schema-version") != SCHEMA_VERSION:
        raise MessageSchemaError(
            f"expected schema {SCHEMA_NAME} version {SCHEMA_VERSION}, got {header.get('schema')!r} "
            f"version {header.get('schema-version')!r}; upgrade the older side"
        )
    kind = header.get("kind")
    cls = ALL_KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise MessageSchemaError(f"unknown message kind {kind!r}; known: {', '.join(sorted(ALL_KINDS))}")
    if expect is not None and cls not in expect:
        raise MessageSchemaError(f"expected one of {[c.KIND for c in expect]}, got {kind!r}")
    body = cls.from_config(dict(content.config_records[BODY_RECORD]))
    arrays: dict[str, np.ndarray] = {}
    if ARRAYS_RECORD in names:
        arrays = {k: v.numpy() for k, v in content.array_records[ARRAYS_RECORD].items()}
    metrics: dict[str, float] = {}
    if METRICS_RECORD in names:
        metrics = {k: v for k, v in content.metric_records[METRICS_RECORD].items() if k != "num-examples"}
    return Envelope(body, arrays, metrics)


# -- canonical hashing of arrays -------------------------------------------------------------------
def canonical_array_bytes(arr: np.ndarray) -> bytes:
    """The bytes hashed and stored for one array: ``.npy`` v1.0, little-endian, C order, no pickle."""
    arr = np.require(arr, requirements="C")  # not ascontiguousarray: it turns shape () into (1,)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def array_sha256(arr: np.ndarray) -> str:
    """sha256 (hex) of :func:`canonical_array_bytes`."""
    return hashlib.sha256(canonical_array_bytes(arr)).hexdigest()


def canonical_weights_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    """One byte string for a named set of arrays, independent of dict order.

    ``b"anonfed-weights-v1\\0"`` then, per name in sorted order: 4-byte big-endian length + UTF-8
    name + 8-byte big-endian length + :func:`canonical_array_bytes`. The coordinator stores exactly
    these bytes, so a ledger artifact hash names a file an auditor can re-hash.
    """
    parts = [b"anonfed-weights-v1\x00"]
    for name in sorted(weights):
        raw = name.encode("utf-8")
        data = canonical_array_bytes(weights[name])
        parts += [len(raw).to_bytes(4, "big"), raw, len(data).to_bytes(8, "big"), data]
    return b"".join(parts)


def weights_sha256(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 (hex) of :func:`canonical_weights_bytes`."""
    return hashlib.sha256(canonical_weights_bytes(weights)).hexdigest()


def weights_layout_mismatch(weights: Mapping[str, np.ndarray], reference: Mapping[str, Any]) -> str | None:
    """Why ``weights`` cannot stand in for ``reference`` (a model's named arrays), or None if it can.

    The same names, the same shape per name, and only finite values: what a received update or an
    operator's start file must satisfy before it is averaged into, or replaces, a global model.
    """
    missing, extra = sorted(set(reference) - set(weights)), sorted(set(weights) - set(reference))
    if missing or extra:
        return f"not the model's layout: missing {missing[:5]}, unexpected {extra[:5]}"
    for name in sorted(reference):
        got, want = np.shape(weights[name]), np.shape(reference[name])
        if got != want:
            return f"{name} has shape {got}, the model needs {want}"
        if not np.isfinite(weights[name]).all():
            return f"{name} holds NaN or infinity"
    return None


# -- helpers ---------------------------------------------------------------------------------------
_HINT_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINT_CACHE:
        _HINT_CACHE[cls] = typing.get_type_hints(cls)
    return _HINT_CACHE[cls]


def _is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if _is_optional(hint) else hint


def _check_value(kind: str, name: str, value: Any, hint: Any) -> None:
    if value is None:
        if not _is_optional(hint):
            raise MessageSchemaError(f"{kind}: field {name!r} is required, got None")
        return
    base = _base_type(hint)
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        ok = isinstance(value, tuple) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if not ok:
            raise MessageSchemaError(f"{kind}: field {name!r} must be a tuple of {item.__name__}, got {value!r}")
        if len(value) > MAX_LIST_ITEMS:
            raise MessageSchemaError(f"{kind}: field {name!r} has {len(value)} items, at most {MAX_LIST_ITEMS}")
        for v in value:
            if isinstance(v, str):
                _check_string(kind, name, v)
            elif isinstance(v, bytes) and len(v) > MAX_BYTES:
                raise MessageSchemaError(f"{kind}: an item of {name!r} holds {len(v)} bytes, at most {MAX_BYTES}")
        return
    if isinstance(base, type) and issubclass(base, enum.Enum):
        if not isinstance(value, base):
            raise MessageSchemaError(f"{kind}: field {name!r} must be a {base.__name__}, got {value!r}")
        return
    if base not in SCALAR_TYPES:
        raise MessageSchemaError(f"{kind}: field {name!r} has undeclared type {base!r}")  # a schema bug
    if isinstance(value, bool) and base is not bool:
        raise MessageSchemaError(f"{kind}: field {name!r} must be {base.__name__}, got a bool")
    if base is float and isinstance(value, int):
        raise MessageSchemaError(f"{kind}: field {name!r} must be a float, got int {value!r}")
    if not isinstance(value, base):
        raise MessageSchemaError(f"{kind}: field {name!r} must be {base.__name__}, got {type(value).__name__}")
    if base is float and not math.isfinite(value):
        raise MessageSchemaError(f"{kind}: field {name!r} must be finite, got {value!r}")
    if base is str:
        _check_string(kind, name, value)
    if base is bytes and len(value) > MAX_BYTES:
        raise MessageSchemaError(f"{kind}: field {name!r} holds {len(value)} bytes, at most {MAX_BYTES} allowed")


def _check_string(kind: str, name: str, value: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise MessageSchemaError(f"{kind}: field {name!r} is {len(value)} characters, at most {MAX_STRING_CHARS}")


def _coerce(kind: str, name: str, value: Any, hint: Any) -> Any:
    base = _base_type(hint)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, list):
            raise MessageSchemaError(f"{kind}: field {name!r} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        try:
            return base(value)
        except ValueError as exc:
            allowed = [m.value for m in base]
            raise MessageSchemaError(f"{kind}: field {name!r} must be one of {allowed}, got {value!r}") from exc
    return value


def _positive(msg: WireMessage, *names: str) -> None:
    for name in names:
        value = getattr(msg, name)
        if value is not None and not value > 0:
            raise MessageSchemaError(f"{msg.KIND}: field {name!r} must be > 0, got {value!r}")


def _claims_held(msg: WireMessage) -> None:
    held = getattr(msg, "ledger_claims_held")
    if held is not None and held < 0:
        raise MessageSchemaError(f"{msg.KIND}: ledger_claims_held must be >= 0, got {held}")


def _prior_claims(msg: WireMessage) -> None:
    if getattr(msg, "prior_claims") and getattr(msg, "claim") is None:
        raise MessageSchemaError(f"{msg.KIND}: prior_claims need the reply's own claim")


def _site_id(msg: WireMessage) -> None:
    site = getattr(msg, "site_id")
    if not _SITE_ID.match(site):
        raise MessageSchemaError(f"{msg.KIND}: site_id must be 2-63 lowercase letters, digits or '-', got {site!r}")


def _sha(msg: WireMessage, name: str) -> None:
    if not _SHA256.match(getattr(msg, name)):
        raise MessageSchemaError(f"{msg.KIND}: field {name!r} must be 64 lowercase hex digits")
