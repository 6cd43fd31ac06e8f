"""Verify a privacy ledger with nothing but the file and the public keys (no trust in the coordinator).

Checks, per entry in file order (a finding names the entry's sequence number and site):

1. the line is a canonical, schema-valid entry whose ``seq`` is its position (ChainError);
2. ``prev`` is the hash of the previous line: catches edits, deletions, insertions, reordering
   (ChainError);
3. the coordinator's countersignature verifies with ``coordinator.pub`` (SignatureError);
4. the site's signature verifies with ``<site>.pub`` and names that key (SignatureError): catches
   replaced signatures and claims forged with another site's key;
5. the site's claim sequence and claim chain continue (ChainError: replayed, duplicated or removed
   claims, even if a dishonest coordinator re-chained and re-signed the ledger);
6. cumulative epsilon per site and dataset never decreases, ``epsilon`` is the increase, and the
   value is recomputed from the recorded mechanisms with dp-accounting within the tolerance
   stated in :mod:`coordinator.audit.recompute` (AccountingError);
7. k-anonymity releases have ``k >= min_k`` and every cluster >= k patients (KAnonymityError);
8. optionally, each artifact's SHA-256 names a file in the synthetic-output store whose content
   has that hash (IntegrityError);
9. the training claims of one run and round that name their starting weights
   (``start_weights_sha256``, claim schema 2) all name the same weights: every site of a round
   must have started from the one global model (IntegrityError). The summary states, per run, the
   weights its first recorded round started from, for comparison with a declared (e.g. public)
   starting model.

After the last entry: the signed head (``LEDGER.head``) must verify and must not name more
entries than the file holds (ChainError: the tail was truncated). A torn tail (interrupted write)
is a warning: the entries before it still verify.

:func:`audit` never raises for bad evidence and returns every finding; :func:`verify` raises the
first error. Signature checks may run in worker processes (``workers``); the result is the same.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import hashlib
import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

from protocols.errors import AnonfedError, BadInputError, ChainError, IntegrityError, SignatureError
from protocols.ledger import GENESIS, LedgerEntry, MechanismKind, entry_hash_of
from protocols.signing import VerifyKey

from coordinator.audit.signature_batch import LineSignatureChecker
from coordinator.ledger.claim_checks import SiteTracker
from coordinator.ledger.head import head_path_for, read_head
from coordinator.ledger.storage import scan

log = logging.getLogger(__name__)

COORDINATOR_KEY_NAME = "coordinator"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found, with the entry it concerns (``seq`` None: the ledger as a whole)."""

    severity: Severity
    error: type[AnonfedError]
    seq: int | None
    site: str | None
    message: str
    stage: int = 2  # 0 record and chain structure, 1 signatures, 2 claim content, 3 artifacts

    def describe(self) -> str:
        where = "ledger" if self.seq is None else f"entry {self.seq}" + (f" (site {self.site})" if self.site else "")
        tag = "FAIL" if self.severity is Severity.ERROR else "WARN"
        return f"{tag}: {where}: {self.error.__name__}: {self.message}"


@dataclasses.dataclass(frozen=True)
class EntryRow:
    """What the report shows of one valid-looking entry."""

    seq: int
    site: str
    run_id: str
    round: int
    task: str
    dataset: str
    mechanism: str
    epsilon: float
    cumulative_epsilon: float
    k: int | None
    min_k: int | None
    cluster_sizes: tuple[int, ...]
    artifacts: int
    time: str
    start_weights_sha256: str | None = None  # training claims of schema 2: the model the round started from


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """Everything :func:`audit` found."""

    ledger: Path
    entries: int
    torn_bytes: int
    head_count: int | None
    findings: tuple[Finding, ...]
    rows: tuple[EntryRow, ...]
    sites: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def first_error(self) -> Finding | None:
        errs = self.errors
        return min(errs, key=_order) if errs else None

    def summary_lines(self) -> list[str]:
        """``OK:``/``FAIL:``/``WARN:`` lines for the CLI."""
        lines = [f.describe() for f in sorted(self.findings, key=_order)]
        if self.ok:
            per_site = {}
            for r in self.rows:
                if r.mechanism == MechanismKind.DP_SGD.value or r.mechanism == MechanismKind.NONE.value:
                    per_site.setdefault(r.site, {})[r.dataset] = r.cumulative_epsilon
            lines.append(f"OK: chain of {self.entries} entries intact; every entry signed by its site and countersigned")
            lines.append("OK: cumulative epsilon monotonic and recomputed with dp-accounting within tolerance")
            for site in self.sites:
                eps = ", ".join(f"{d} {e:.4g}" for d, e in sorted(per_site.get(site, {}).items())) or "no DP releases"
                lines.append(f"OK: site {site}: {sum(r.site == site for r in self.rows)} entries; cumulative epsilon {eps}")
            consortium: dict[str, float] = {}
            for eps_by_dataset in per_site.values():
                for d, e in eps_by_dataset.items():
                    consortium[d] = max(consortium.get(d, 0.0), e)
            if consortium:
                figures = ", ".join(f"{d} {e:.4g}" for d, e in sorted(consortium.items()))
                lines.append(f"OK: consortium epsilon (max over sites; sites hold disjoint patients): {figures}")
            for run, (rnd, digest) in sorted(run_starts(self.rows).items()):
                start = f"weights_sha256 {digest}" if digest else \
                    "weights its claims do not name (the sites initialised the model, or claims before claim schema 2)"
                lines.append(f"OK: run {run}: round {rnd}, its first recorded training round, started from {start}")
        else:
            first = self.first_error
            assert first is not None
            where = "ledger" if first.seq is None else f"entry {first.seq}" + (f" (site {first.site})" if first.site else "")
            lines.append(f"FAIL: {len(self.errors)} error(s); first bad: {where}: {first.error.__name__}")
        return lines


def _order(f: Finding) -> tuple[int, int]:
    # By entry; within an entry, structure before signatures before content (the most basic cause).
    return (f.seq if f.seq is not None else 1 << 62, f.stage)


def audit(
    ledger_path: Path,
    keys: Mapping[str, VerifyKey],
    *,
    head_path: Path | None = None,
    store: Path | None = None,
    workers: int = 1,
) -> AuditResult:
    """Check everything in the module docstring; return all findings (never raises for bad evidence).

    ``keys`` maps ``coordinator`` and each site id to its public key (see
    :func:`protocols.signing.load_key_directory`).

    Raises
    ------
    BadInputError
        If the ledger cannot be read or the coordinator key is missing (nothing can be checked).
    """
    ledger_path = Path(ledger_path)
    if not ledger_path.is_file():
        raise BadInputError(f"ledger {ledger_path} does not exist or is not a file")
    if COORDINATOR_KEY_NAME not in keys:
        raise BadInputError(f"the key folder needs {COORDINATOR_KEY_NAME}.pub (export it with `anonfed keys export`)")
    coord_key = keys[COORDINATOR_KEY_NAME]
    found = scan(ledger_path)
    findings: list[Finding] = []
    rows: list[EntryRow] = []
    tracker = SiteTracker()
    store_index = _index_store(store) if store is not None else None
    hashes: list[str] = []
    # The scan keeps ~10 acyclic objects per entry; cyclic GC passes over that growing heap cost
    # 5-15 % at 100,000 entries and find nothing, so they are paused for the scan.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with LineSignatureChecker(found.lines, keys, coordinator_key=COORDINATOR_KEY_NAME, workers=workers) as checker:
            _scan_entries(found.lines, keys, coord_key, checker, tracker, store_index, findings, rows, hashes)
            failed = checker.failures()
    finally:
        if gc_was_enabled:
            gc.enable()
    for fail in failed:
        findings.append(Finding(Severity.ERROR, SignatureError, fail.seq, fail.site, f"{fail.what} does not verify", 1))

    n = len(found.lines)
    if found.torn_bytes:
        findings.append(Finding(Severity.WARNING, ChainError, None, None,
                                f"{found.torn_bytes} bytes after entry {n - 1} are an interrupted write; ignored"))
    head_count = _check_head(head_path or head_path_for(ledger_path), coord_key, hashes, findings)
    if store_index is not None:
        _check_unclaimed(store_index, findings)
    _check_round_starts(rows, findings)
    sites = tuple(sorted({r.site for r in rows}))
    return AuditResult(ledger_path, n, found.torn_bytes, head_count, tuple(findings), tuple(rows), sites)


def _check_round_starts(rows: Sequence[EntryRow], findings: list[Finding]) -> None:
    """Check 9: one starting model per (run, round) among the claims that name one."""
    first: dict[tuple[str, int], EntryRow] = {}
    for r in rows:
        if r.start_weights_sha256 is None:  # schema-1 claims, catch-up claims, site-initialised rounds
            continue
        seen = first.setdefault((r.run_id, r.round), r)
        if seen.start_weights_sha256 != r.start_weights_sha256:
            findings.append(Finding(Severity.ERROR, IntegrityError, r.seq, r.site,
                                    f"run {r.run_id} round {r.round} started from weights {r.start_weights_sha256}, "
                                    f"but {seen.site} (entry {seen.seq}) started that round from "
                                    f"{seen.start_weights_sha256}: the sites did not train the same global model", 2))


def run_starts(rows: Sequence[EntryRow]) -> dict[str, tuple[int, str | None]]:
    """Per run: (its first recorded training round, the weights_sha256 that round started from, None
    if the sites initialised the model themselves or the claims predate claim schema 2)."""
    out: dict[str, tuple[int, str | None]] = {}
    for r in rows:
        if r.mechanism != MechanismKind.DP_SGD.value:
            continue
        have = out.get(r.run_id)
        if have is None or r.round < have[0] or (r.round == have[0] and have[1] is None):
            out[r.run_id] = (r.round, r.start_weights_sha256)
    return out


def _scan_entries(
    lines: Sequence[bytes],
    keys: Mapping[str, VerifyKey],
    coord_key: VerifyKey,
    checker: LineSignatureChecker,
    tracker: SiteTracker,
    store_index: "_StoreIndex | None",
    findings: list[Finding],
    rows: list[EntryRow],
    hashes: list[str],
) -> None:
    """Checks 1-8 of the module docstring, in file order; signatures go to ``checker``."""
    prev = GENESIS
    coord_key_id = coord_key.key_id
    site_key_ids = {name: key.key_id for name, key in keys.items()}
    # Hot loop (once per entry of ledgers with 10^5 entries): local names, no per-entry closures.
    parse, expect, check, accept = LedgerEntry.from_line, checker.expect, tracker.check, tracker.accept
    for i, line in enumerate(lines):
        this_hash = entry_hash_of(line)
        hashes.append(this_hash)
        try:
            entry = parse(line)
        except BadInputError as exc:
            findings.append(Finding(Severity.ERROR, ChainError, i, None, f"not a valid ledger record: {exc}", 0))
            prev = this_hash
            continue
        claim = entry.signed.claim
        site = claim.site
        if entry.seq != i:
            findings.append(Finding(Severity.ERROR, ChainError, i, site, f"records seq {entry.seq} at position {i}: "
                                    "entries were removed, inserted or reordered", 0))
        if entry.prev != prev:
            findings.append(Finding(Severity.ERROR, ChainError, i, site, "previous-hash link broken: an entry before it "
                                    "was edited, removed, inserted or reordered", 0))
        prev = this_hash
        countersigned = entry.coordinator_key_id == coord_key_id
        if not countersigned:
            findings.append(Finding(Severity.ERROR, SignatureError, i, site, f"countersigned with key "
                                    f"{entry.coordinator_key_id}, not coordinator.pub ({coord_key_id})", 1))
        site_key_id = site_key_ids.get(site)
        if site_key_id is None:
            findings.append(Finding(Severity.ERROR, SignatureError, i, site,
                                    f"no public key for site {site} in the key folder ({site}.pub)", 1))
        elif claim.key_id != site_key_id:
            findings.append(Finding(Severity.ERROR, SignatureError, i, site, f"claim names key {claim.key_id} but "
                                    f"{site}.pub is {site_key_id} (signed with another key)", 1))
            site_key_id = None
        if countersigned or site_key_id is not None:
            expect(i, site, site_key=site if site_key_id is not None else None, countersigned=countersigned)
        planned = None
        try:
            planned = check(claim)
        except AnonfedError as exc:  # integrity errors, and KAnonymityError (a policy error, still a bad entry)
            findings.append(Finding(Severity.ERROR, type(exc), i, site, str(exc), 2))
        accept(claim, planned)
        if store_index is not None:
            for art in claim.artifacts:
                store_index.named.add(art.sha256)
                problem = _check_artifact(store_index, art.sha256)
                if problem:
                    findings.append(Finding(Severity.ERROR, IntegrityError, i, site, f"artifact {art.name}: {problem}", 3))
        rows.append(_row(entry))


def verify(
    ledger_path: Path,
    keys: Mapping[str, VerifyKey],
    *,
    head_path: Path | None = None,
    store: Path | None = None,
    workers: int = 1,
) -> AuditResult:
    """Like :func:`audit`, but raise the first error.

    Raises
    ------
    ChainError, SignatureError, AccountingError, KAnonymityError, IntegrityError
        The class of the first error finding, its message naming the entry and site.
    """
    result = audit(ledger_path, keys, head_path=head_path, store=store, workers=workers)
    first = result.first_error
    if first is not None:
        where = "ledger" if first.seq is None else f"entry {first.seq}" + (f" (site {first.site})" if first.site else "")
        raise first.error(f"{where}: {first.message}")
    return result


def _check_head(path: Path, key: VerifyKey, hashes: Sequence[str], findings: list[Finding]) -> int | None:
    n = len(hashes)
    try:
        head = read_head(path)
    except BadInputError as exc:
        findings.append(Finding(Severity.ERROR, ChainError, None, None, f"signed head {path.name} is invalid: {exc}"))
        return None
    if head is None:
        findings.append(Finding(Severity.WARNING, ChainError, None, None,
                                f"no signed head ({path.name}): a truncated tail cannot be detected from the ledger "
                                "alone; compare with the sites' claim logs"))
        return None
    try:
        head.verify(key)
    except AnonfedError as exc:
        findings.append(Finding(Severity.ERROR, SignatureError, None, None, str(exc)))
        return head.count
    if head.count > n:
        findings.append(Finding(Severity.ERROR, ChainError, n, None,
                                f"missing: the signed head records {head.count} entries but the ledger ends after "
                                f"entry {n - 1}; entries {n}..{head.count - 1} were truncated"))
    elif head.count and hashes[head.count - 1] != head.last_hash:
        findings.append(Finding(Severity.ERROR, ChainError, head.count - 1, None,
                                "does not match the hash in the signed head: the ledger was rewritten"))
    elif n - head.count > 1:
        findings.append(Finding(Severity.WARNING, ChainError, None, None,
                                f"the signed head is {n - head.count} entries behind the ledger"))
    return head.count


def _row(entry: LedgerEntry) -> EntryRow:
    c = entry.claim
    return EntryRow(
        entry.seq, c.site, c.run_id, c.round, c.task.value, c.dataset, c.mechanism.kind.value, c.epsilon,
        c.cumulative_epsilon, c.kanon.k if c.kanon else None, c.kanon.min_k if c.kanon else None,
        c.kanon.cluster_sizes if c.kanon else (), len(c.artifacts), c.time, c.start_weights_sha256,
    )


@dataclasses.dataclass
class _StoreIndex:
    paths: dict[str, Path]
    verified: dict[str, bool]
    named: set[str] = dataclasses.field(default_factory=set)  # digests some entry's artifact names


def _index_store(store: Path) -> _StoreIndex:
    store = Path(store)
    if not store.is_dir():
        raise BadInputError(f"synthetic-output store {store} is not a folder")
    paths: dict[str, Path] = {}
    for p in store.rglob("*"):
        stem = p.name.split(".", 1)[0]
        if _HEX64.match(stem) and p.is_file():
            paths[stem] = p
    return _StoreIndex(paths, {})


def _check_unclaimed(index: _StoreIndex, findings: list[Finding]) -> None:
    """Store files no entry names: outputs held without a ledger record (or from a run kept without
    a ledger). A warning, since the ledger's own claims are intact; the auditor decides."""
    unclaimed = sorted(set(index.paths) - index.named)
    if unclaimed:
        shown = ", ".join(index.paths[d].name for d in unclaimed[:3]) + (", ..." if len(unclaimed) > 3 else "")
        findings.append(Finding(Severity.WARNING, IntegrityError, None, None,
                                f"the store holds {len(unclaimed)} file(s) that no ledger entry names: {shown}", 3))


def _check_artifact(index: _StoreIndex, digest: str) -> str | None:
    path = index.paths.get(digest)
    if path is None:
        return f"no file named {digest[:16]}... in the store"
    ok = index.verified.get(digest)
    if ok is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        ok = index.verified[digest] = h.hexdigest() == digest
    return None if ok else f"store file {path.name} does not hash to its name (content altered)"


def ledger_rows(ledger_path: Path) -> list[EntryRow]:
    """The report rows of every parsable entry, without any verification (for unverified reports)."""
    rows = []
    for line in scan(Path(ledger_path)).lines:
        try:
            rows.append(_row(LedgerEntry.from_line(line)))
        except BadInputError:
            continue
    return rows
