"""A write interrupted at any byte leaves a ledger that verifies up to its last complete entry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coordinator.audit.verify import audit
from coordinator.ledger import Ledger
from coordinator.ledger.head import head_path_for
from protocols.errors import ChainError


@pytest.fixture
def states(tmp_path, coordinator_key, claims, site_public):
    """Ledger and head bytes before the last append, and the bytes of the last entry."""
    path = tmp_path / "ledger.jsonl"
    with Ledger.open(path, coordinator_key) as ledger:
        for c in claims[:2]:
            ledger.append_site_claim(c, site_public[c.claim.site])
    before, head_before = path.read_bytes(), head_path_for(path).read_bytes()
    with Ledger.open(path, coordinator_key) as ledger:
        ledger.append_site_claim(claims[2], site_public[claims[2].claim.site])
    last = path.read_bytes()[len(before):]
    return path, before, head_before, last


def _crash_at(path: Path, before: bytes, head_before: bytes, last: bytes, cut: int) -> None:
    """The disk state after a crash that wrote ``cut`` bytes of the last record (head not yet updated)."""
    path.write_bytes(before + last[:cut])
    head_path_for(path).write_bytes(head_before)


def test_every_cut_verifies_up_to_the_last_complete_entry(states, site_public, coordinator_key) -> None:
    path, before, head_before, last = states
    keys = dict(site_public) | {"coordinator": coordinator_key.public}
    for cut in range(len(last) + 1):
        _crash_at(path, before, head_before, last, cut)
        result = audit(path, keys)
        assert result.ok, (cut, result.summary_lines())
        complete = cut == len(last)
        assert result.entries == (3 if complete else 2), cut
        assert result.torn_bytes == (0 if complete else cut), cut


def test_next_append_repairs_the_torn_tail(states, site_public, coordinator_key, claims, caplog) -> None:
    path, before, head_before, last = states
    keys = dict(site_public) | {"coordinator": coordinator_key.public}
    for cut in sorted({1, len(last) // 2, len(last) - 1, *range(7, len(last), 97)}):
        _crash_at(path, before, head_before, last, cut)
        with caplog.at_level(logging.WARNING, logger="coordinator.ledger"):
            with Ledger.open(path, coordinator_key) as ledger:
                assert len(ledger) == 2
                ledger.append_site_claim(claims[2], site_public[claims[2].claim.site])
        assert "interrupted write" in caplog.text
        result = audit(path, keys)
        assert result.ok and result.entries == 3 and result.torn_bytes == 0, cut


def test_append_refuses_when_repair_is_disabled(states, site_public, coordinator_key, claims) -> None:
    path, before, head_before, last = states
    _crash_at(path, before, head_before, last, len(last) // 3)
    with Ledger.open(path, coordinator_key, repair_torn_tail=False) as ledger:
        with pytest.raises(ChainError, match=r"bytes of an interrupted write after entry 1; refusing to append"):
            ledger.append_site_claim(claims[2], site_public[claims[2].claim.site])
    assert path.read_bytes() == before + last[: len(last) // 3]  # untouched
