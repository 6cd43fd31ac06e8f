"""The site's own copy of every claim it signed: its evidence against an omission by the coordinator.

One canonical :class:`~protocols.ledger.SignedClaim` per line, appended write-ahead (full record,
fsync file, fsync folder) *before* the claim is sent, so anything that left the site is in the log.
A torn tail from a crash is ignored on read and removed before the next record (logged).

Usage in the ClientApp (after training, before replying)::

    log = SiteClaimLog(cfg.state.root / "ledger" / "claims.jsonl")
    claim = log.new_claim(run_id=..., round=..., site=cfg.site_id, key_id=key.key_id, task=...,
                          dataset=..., mechanism=..., epsilon=..., cumulative_epsilon=..., artifacts=...)
    signed = sign_claim(claim, key)
    log.record(signed)                       # durable before it leaves
    reply_config["ledger-claim"] = signed.to_bytes()
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from protocols.errors import BadInputError, ChainError
from protocols.ledger import GENESIS, SignedClaim, SiteClaim, make_claim

log = logging.getLogger(__name__)

CLAIM_LOG_NAME = "claims.jsonl"


def claim_log_path(state_root: Path) -> Path:
    """Where a site keeps its claim log inside its state folder."""
    return Path(state_root) / "ledger" / CLAIM_LOG_NAME


class SiteClaimLog:
    """Append-only log of this site's signed claims (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._claims, self._complete_size, self._torn = self._read()

    def _read(self) -> tuple[list[SignedClaim], int, int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0, 0
        except OSError as exc:
            raise BadInputError(f"cannot read the site claim log {self.path}: {exc.strerror}") from exc
        end = data.rfind(b"\n") + 1
        claims = []
        for i, line in enumerate(data[:end].split(b"\n")[:-1] if end else []):
            try:
                claims.append(SignedClaim.from_bytes(line))
            except BadInputError as exc:
                raise ChainError(f"site claim log {self.path.name} line {i} is not a valid signed claim: {exc}") from exc
        if len(data) > end:
            log.warning("site claim log %s ends with %d bytes of an interrupted write", self.path.name, len(data) - end)
        return claims, end, len(data) - end

    def claims(self) -> list[SignedClaim]:
        """Every recorded claim, oldest first."""
        return list(self._claims)

    def since(self, site_seq: int) -> list[SignedClaim]:
        """Claims with ``site_seq >= site_seq`` (to resend what the coordinator is missing)."""
        return [c for c in self._claims if c.claim.site_seq >= site_seq]

    @property
    def next_seq(self) -> int:
        return len(self._claims)

    @property
    def last_hash(self) -> str:
        return self._claims[-1].claim.claim_hash if self._claims else GENESIS

    def new_claim(self, **fields: Any) -> SiteClaim:
        """:func:`protocols.ledger.make_claim` with ``site_seq`` and ``site_prev`` filled from the log."""
        return make_claim(site_seq=self.next_seq, site_prev=self.last_hash, **fields)

    def record(self, signed: SignedClaim) -> None:
        """Append ``signed`` durably; it must continue this log's claim chain.

        Holds an exclusive lock on the file and re-reads it first, so two agent processes (Flower
        runs each message in a fresh process) can never overwrite or interleave each other's
        claims: a claim built on a stale view is refused.

        Raises
        ------
        ChainError
            If ``signed`` does not carry the next ``site_seq`` and the previous claim's hash (also
            when another process recorded a claim since this one was built: build it again).
        """
        import fcntl

        claim = signed.claim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close()
            self._claims, self._complete_size, self._torn = self._read()
            if claim.site_seq != self.next_seq or claim.site_prev != self.last_hash:
                raise ChainError(
                    f"claim {claim.site_seq} does not continue the site claim log (expected site_seq {self.next_seq} "
                    f"and the hash of claim {self.next_seq - 1}); build claims with SiteClaimLog.new_claim"
                )
            if self._claims and self._claims[0].claim.site != claim.site:
                raise ChainError(f"claim of site {claim.site} cannot go into the log of site {self._claims[0].claim.site}")
            if self._torn:
                log.warning("removing %d bytes of an interrupted write from %s", self._torn, self.path.name)
            os.ftruncate(fd, self._complete_size)  # drops a torn tail; no-op otherwise
            os.lseek(fd, self._complete_size, os.SEEK_SET)
            view = memoryview(signed.to_bytes() + b"\n")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            self._complete_size = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
        if created:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._torn = 0
        self._claims.append(signed)
