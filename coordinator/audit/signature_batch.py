"""Check both Ed25519 signatures of many ledger lines, optionally in worker processes.

Signature checks are about 60 % of an audit's CPU time (about 0.06 ms each with libsodium, two
per entry) and independent of each other, so they are the part worth spreading over cores. With
``workers`` > 1 the pool is forked after the ledger is read: each worker already holds every line,
so a task is only a range of positions and the key to use for each, and the worker slices the
signed bytes itself with :func:`protocols.ledger.signed_parts`, the same function the parser
uses. (Shipping the ~2 KB of signed bytes per entry to the workers cost more CPU than it saved.)
Tasks are handed out as soon as the caller has vetted a chunk of entries, so checking overlaps
with the caller's sequential work. The result never depends on ``workers``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Mapping, Sequence

from protocols.errors import BadInputError
from protocols.ledger import CLAIM_DOMAIN, COUNTERSIGN_DOMAIN, signed_parts
from protocols.signing import VerifyKey

CHUNK = 2000  # entries per task handed to a worker
COORDINATOR = "coordinator countersignature"
SITE = "site signature"


@dataclasses.dataclass(frozen=True)
class FailedSignature:
    """A signature that did not verify."""

    seq: int
    site: str
    what: str


# Set in the parent right before the pool forks, read by the workers (inherited, never pickled).
_lines: Sequence[bytes] = ()
_keys: Mapping[str, VerifyKey] = {}


def _check_lines(seqs: Sequence[int], site_keys: Sequence[str | None], coordinator_key: str | None,
                 lines: Sequence[bytes] | None = None, keys: Mapping[str, VerifyKey] | None = None
                 ) -> list[tuple[int, str]]:
    """(position, which signature) for every failure among ``seqs``; None skips that signature."""
    lines = _lines if lines is None else lines
    keys = _keys if keys is None else keys
    coord = keys[coordinator_key] if coordinator_key is not None else None
    bad: list[tuple[int, str]] = []
    for seq, site_key in zip(seqs, site_keys):
        try:
            parts = signed_parts(lines[seq])
        except BadInputError:  # the parser reports the line itself; only vetted lines arrive here
            bad.append((seq, COORDINATOR))
            continue
        if coord is not None and not coord.is_valid(parts.coordinator_sig, domain=COUNTERSIGN_DOMAIN,
                                                    payload=parts.unsigned):
            bad.append((seq, COORDINATOR))
        if site_key is not None and not keys[site_key].is_valid(parts.site_sig, domain=CLAIM_DOMAIN,
                                                                 payload=parts.claim):
            bad.append((seq, SITE))
    return bad


class LineSignatureChecker:
    """Checks the countersignature and site signature of vetted ledger lines; a context manager.

    The caller parses each line, checks that its key ids name the expected keys, then calls
    :meth:`expect`; :meth:`failures` returns every signature that did not verify.
    """

    def __init__(self, lines: Sequence[bytes], keys: Mapping[str, VerifyKey], *, coordinator_key: str,
                 workers: int = 1) -> None:
        self._lines = lines
        self._keys = dict(keys)
        self._coordinator_key = coordinator_key
        self.workers = workers or (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None
        self._sites: dict[int, str] = {}
        self._seqs: list[int] = []
        self._site_keys: list[str | None] = []
        self._skip_coordinator: set[int] = set()
        self._futures: list[Future[list[tuple[int, str]]]] = []
        self._failed: list[FailedSignature] = []

    def __enter__(self) -> "LineSignatureChecker":
        if self.workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            global _lines, _keys
            _lines, _keys = self._lines, self._keys
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self

    def __exit__(self, *exc: object) -> None:
        global _lines, _keys
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        _lines, _keys = (), {}

    def expect(self, seq: int, site: str, *, site_key: str | None, countersigned: bool) -> None:
        """Check line ``seq``'s site signature with ``site_key`` (None: skip) and, if
        ``countersigned``, its countersignature with the coordinator key."""
        self._sites[seq] = site
        if not countersigned:
            self._skip_coordinator.add(seq)
        self._seqs.append(seq)
        self._site_keys.append(site_key)
        if len(self._seqs) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._seqs:
            return
        # A chunk is split by whether the coordinator key applies, so a task carries no flags.
        seqs, keys = self._seqs, self._site_keys
        groups = [([s for s in seqs if s not in self._skip_coordinator],
                   [k for s, k in zip(seqs, keys) if s not in self._skip_coordinator], self._coordinator_key)]
        if self._skip_coordinator:
            groups.append(([s for s in seqs if s in self._skip_coordinator],
                           [k for s, k in zip(seqs, keys) if s in self._skip_coordinator], None))
            self._skip_coordinator = set()
        for group_seqs, group_keys, coord in groups:
            if not group_seqs:
                continue
            if self._pool is None:
                self._record(_check_lines(group_seqs, group_keys, coord, self._lines, self._keys))
            else:
                self._futures.append(self._pool.submit(_check_lines, group_seqs, group_keys, coord))
        self._seqs, self._site_keys = [], []

    def _record(self, bad: list[tuple[int, str]]) -> None:
        self._failed.extend(FailedSignature(seq, self._sites[seq], what) for seq, what in bad)

    def failures(self) -> list[FailedSignature]:
        """Every failed signature, ordered by entry (waits for the workers)."""
        self._flush()
        for fut in self._futures:
            self._record(fut.result())
        self._futures = []
        return sorted(self._failed, key=lambda f: (f.seq, f.what))
