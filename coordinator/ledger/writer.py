"""The coordinator's ledger: check a site's signed claim, countersign it, append it durably.

Usage from the Flower ServerApp (plain Python, no Flower types)::

    ledger = Ledger.open(Path("state/ledger.jsonl"), coordinator_key)
    signed = SignedClaim.from_bytes(reply_config["ledger-claim"])      # bytes or str
    entry = ledger.append_site_claim(signed, site_public_keys[signed.claim.site])
    ledger.close()

``append_site_claim`` refuses (and appends nothing) if the claim's signature, sequence or epsilon
does not check out; the exception names the site and its claim number. The entry is on disk
(fsync'd) when the call returns, and the signed head (``ledger.jsonl.head``) is updated after it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from protocols.errors import BadInputError, ChainError, SignatureError
from protocols.ledger import GENESIS, LedgerEntry, SignedClaim, countersign, entry_hash_of, utc_now
from protocols.signing import SigningKey, VerifyKey

from coordinator.ledger.claim_checks import SiteState, SiteTracker
from coordinator.ledger.head import head_path_for, sign_head, write_head
from coordinator.ledger.storage import AppendOnlyFile, scan

log = logging.getLogger(__name__)


class Ledger:
    """An open, append-only, hash-chained ledger owned by one coordinator process.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, path: Path, key: SigningKey, file: AppendOnlyFile, entries: list[LedgerEntry],
                 tracker: SiteTracker, torn_bytes: int, repair_torn_tail: bool) -> None:
        self.path = path
        self._key = key
        self._file = file
        self._entries = entries
        self._tracker = tracker
        self._torn_bytes = torn_bytes
        self._repair = repair_torn_tail
        self._last_hash = entries[-1].entry_hash if entries else GENESIS
        self._by_claim = {(e.claim.site, e.claim.site_seq): e.seq for e in entries}

    @classmethod
    def open(cls, path: Path, coordinator_key: SigningKey, *, repair_torn_tail: bool = True) -> "Ledger":
        """Open (or create) the ledger at ``path`` for appending.

        Existing entries are re-read: canonical form, sequence numbers, the hash chain and the
        countersigning key id are checked, so a ledger edited on disk is never extended (full
        signature and epsilon verification is ``anonfed audit verify``, see coordinator.audit). A torn tail (an interrupted write) is reported here and
        removed before the next append if ``repair_torn_tail`` (logged), else that append refuses.

        Raises
        ------
        ChainError
            If a stored entry is not canonical, out of sequence, or breaks the hash chain.
        SignatureError
            If a stored entry was not countersigned by ``coordinator_key``.
        BadInputError
            If the file cannot be read or is locked by another process.
        """
        path = Path(path)
        file = AppendOnlyFile(path)
        try:
            found = scan(path)
            entries: list[LedgerEntry] = []
            tracker = SiteTracker()
            prev = GENESIS
            for seq, line in enumerate(found.lines):
                try:
                    entry = LedgerEntry.from_line(line)
                except BadInputError as exc:
                    raise ChainError(f"ledger {path.name} entry {seq} is not a valid record: {exc}") from exc
                if entry.seq != seq or entry.prev != prev:
                    raise ChainError(f"ledger {path.name} entry {seq} (site {entry.claim.site}) breaks the chain "
                                     "(sequence number or previous hash); the file was edited")
                if entry.coordinator_key_id != coordinator_key.key_id:
                    raise SignatureError(f"ledger {path.name} entry {seq} was countersigned by key "
                                         f"{entry.coordinator_key_id}, not this coordinator's {coordinator_key.key_id}")
                tracker.accept(entry.claim)
                entries.append(entry)
                prev = entry_hash_of(line)
            if found.torn_bytes:
                log.warning("ledger %s ends with %d bytes of an interrupted write after entry %d",
                            path.name, found.torn_bytes, len(entries) - 1)
        except BaseException:
            file.close()
            raise
        return cls(path, coordinator_key, file, entries, tracker, found.torn_bytes, repair_torn_tail)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(list(self._entries))

    @property
    def last_hash(self) -> str:
        return self._last_hash

    def site_state(self, site: str) -> SiteState:
        """Next expected claim number, last claim hash and per-dataset epsilon of ``site``."""
        return self._tracker.state(site)

    def cumulative_epsilon(self, site: str, dataset: str) -> float:
        """The site's recorded cumulative DP epsilon for ``dataset`` (0.0 if none)."""
        ds = self._tracker.state(site).datasets.get(dataset)
        return ds.cumulative if ds else 0.0

    def find_claim(self, site: str, site_seq: int) -> LedgerEntry | None:
        """The entry holding claim ``site_seq`` of ``site``, if recorded."""
        seq = self._by_claim.get((site, site_seq))
        return None if seq is None else self._entries[seq]

    def check_site_claim(self, signed: SignedClaim, site_public_key: VerifyKey) -> None:
        """Everything :meth:`append_site_claim` checks, without appending.

        Raises
        ------
        SignatureError, ChainError, AccountingError, KAnonymityError
            As :meth:`append_site_claim`.
        """
        signed.verify(site_public_key)
        self._tracker.check(signed.claim)

    def append_site_claim(self, signed: SignedClaim, site_public_key: VerifyKey) -> LedgerEntry:
        """Check ``signed``, countersign it and append it durably; return the new entry.

        Sending the identical signed claim again (a retry) returns the entry already recorded and
        appends nothing; a *different* claim under a recorded claim number is refused.

        Raises
        ------
        SignatureError
            If the site signature does not verify with ``site_public_key`` (or names another key).
        ChainError
            If the claim is replayed, duplicated or earlier claims of the site are missing, or a
            torn tail exists and repair is disabled.
        AccountingError
            If the claim's epsilon is inconsistent with the site's history or the recomputation.
        KAnonymityError
            If a k-anonymity release violates its own minimum k.
        """
        signed.verify(site_public_key)
        existing = self.find_claim(signed.claim.site, signed.claim.site_seq)
        if existing is not None and existing.signed == signed:
            # A retry after a lost acknowledgement: the claim is already recorded, nothing to add.
            log.info("site %s claim %d is already ledger entry %d; not appended again",
                     signed.claim.site, signed.claim.site_seq, existing.seq)
            return existing
        planned = self._tracker.check(signed.claim)
        self._repair_torn_tail()
        entry = countersign(signed, seq=len(self._entries), prev=self._last_hash, key=self._key, received_at=utc_now())
        self._file.append(entry.line + b"\n")
        self._entries.append(entry)
        self._by_claim[(signed.claim.site, signed.claim.site_seq)] = entry.seq
        self._last_hash = entry.entry_hash
        self._tracker.accept(signed.claim, planned)
        write_head(head_path_for(self.path), sign_head(count=len(self._entries), last_hash=self._last_hash, key=self._key))
        log.info("ledger entry %d: site %s claim %d (%s, cumulative epsilon %s)", entry.seq, signed.claim.site,
                 signed.claim.site_seq, signed.claim.mechanism.kind.value, signed.claim.cumulative_epsilon)
        return entry

    def _repair_torn_tail(self) -> None:
        if not self._torn_bytes:
            return
        if not self._repair:
            raise ChainError(
                f"ledger {self.path.name} ends with {self._torn_bytes} bytes of an interrupted write after entry "
                f"{len(self._entries) - 1}; refusing to append (open with repair_torn_tail=True to truncate them)"
            )
        complete = self._file.size() - self._torn_bytes
        log.warning("removing %d bytes of an interrupted write from ledger %s (after entry %d)",
                    self._torn_bytes, self.path.name, len(self._entries) - 1)
        self._file.truncate(complete)
        self._torn_bytes = 0
