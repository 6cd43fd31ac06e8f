"""Compare a site's own claim log with the coordinator's ledger: omissions and alterations.

The site holds every claim it signed (:class:`~agent.ledger.site_log.SiteClaimLog`). Against a
ledger received from the coordinator, each of the site's claims must appear exactly once with the
same canonical bytes and signature. Anything else is a discrepancy the site can prove with its
own signed copy.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Iterable, Sequence

from protocols.errors import BadInputError, ChainError
from protocols.ledger import LedgerEntry, SignedClaim


class DiscrepancyKind(str, enum.Enum):
    OMITTED = "omitted"  # the site signed it; the ledger lacks it
    ALTERED = "altered"  # the ledger holds a different claim or signature under that number
    DUPLICATED = "duplicated"  # the ledger holds the same claim number more than once
    UNKNOWN_TO_SITE = "unknown-to-site"  # the ledger holds a claim the site has no record of


@dataclasses.dataclass(frozen=True)
class Discrepancy:
    """One difference between the site's copy and the ledger."""

    kind: DiscrepancyKind
    site_seq: int
    ledger_seq: int | None
    message: str


def read_ledger_entries(path: Path) -> list[LedgerEntry]:
    """The complete entries of a ledger file (a torn tail is ignored).

    Raises
    ------
    ChainError
        If a complete line is not a valid canonical entry.
    BadInputError
        If the file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read ledger {path}: {exc.strerror}") from exc
    end = data.rfind(b"\n") + 1
    entries = []
    for i, line in enumerate(data[:end].split(b"\n")[:-1] if end else []):
        try:
            entries.append(LedgerEntry.from_line(line))
        except BadInputError as exc:
            raise ChainError(f"ledger entry {i} is not a valid record: {exc}") from exc
    return entries


def compare_with_ledger(site_claims: Sequence[SignedClaim], entries: Iterable[LedgerEntry], *, site: str) -> list[Discrepancy]:
    """Every difference between ``site_claims`` (the site's log) and the ledger's claims of ``site``."""
    in_ledger: dict[int, list[LedgerEntry]] = {}
    for e in entries:
        if e.claim.site == site:
            in_ledger.setdefault(e.claim.site_seq, []).append(e)
    found: list[Discrepancy] = []
    mine = {c.claim.site_seq: c for c in site_claims}
    for seq, own in sorted(mine.items()):
        matches = in_ledger.get(seq, [])
        if not matches:
            found.append(Discrepancy(DiscrepancyKind.OMITTED, seq, None,
                                     f"claim {seq} of site {site} (signed {own.claim.time}) is missing from the ledger"))
            continue
        for e in matches:
            if e.claim.canonical != own.claim.canonical or e.signed.signature != own.signature:
                found.append(Discrepancy(DiscrepancyKind.ALTERED, seq, e.seq,
                                         f"ledger entry {e.seq} holds claim {seq} of site {site} with different content or signature"))
        if len(matches) > 1:
            found.append(Discrepancy(DiscrepancyKind.DUPLICATED, seq, matches[1].seq,
                                     f"claim {seq} of site {site} appears {len(matches)} times (entries {[e.seq for e in matches]})"))
    for seq, es in sorted(in_ledger.items()):
        if seq not in mine:
            found.append(Discrepancy(DiscrepancyKind.UNKNOWN_TO_SITE, seq, es[0].seq,
                                     f"ledger entry {es[0].seq} holds claim {seq} of site {site}, which the site never recorded"))
    return found
