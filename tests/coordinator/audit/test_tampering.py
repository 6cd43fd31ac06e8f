"""Every kind of tampering is detected and the first bad entry is named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coordinator.audit.verify import audit, verify
from coordinator.ledger.head import head_path_for, sign_head, write_head
from protocols.canonical import decode, encode
from protocols.errors import AccountingError, ChainError, IntegrityError, SignatureError
from protocols.ledger import GENESIS, LedgerEntry, SignedClaim, countersign, entry_hash_of, sign_claim
from protocols.signing import load_key_directory


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in lines))


def _rechain(path: Path, entries: list[LedgerEntry], coordinator_key) -> None:
    """What a dishonest coordinator (who holds its own key, not the sites') can do: rebuild the chain."""
    prev, lines = GENESIS, []
    for seq, e in enumerate(entries):
        new = countersign(e.signed, seq=seq, prev=prev, key=coordinator_key, received_at=e.received_at)
        lines.append(new.line)
        prev = new.entry_hash
    _write(path, lines)
    write_head(head_path_for(path), sign_head(count=len(lines), last_hash=prev, key=coordinator_key))


@pytest.fixture
def keys(key_dir):
    return load_key_directory(key_dir)


def test_pristine_ledger_verifies(ledger, keys) -> None:
    result = verify(ledger, keys)
    assert result.ok and result.entries == len(_lines(ledger)) and result.head_count == result.entries
    assert set(result.sites) == {"hospital-a", "hospital-b"}
    assert any(line.startswith("OK: site hospital-a") for line in result.summary_lines())


def test_field_edited(ledger, keys) -> None:
    lines = _lines(ledger)
    d = decode(lines[3])
    d["claim"]["round"] += 1
    lines[3] = encode(d)
    _write(ledger, lines)
    with pytest.raises(SignatureError, match=r"entry 3 \(site hospital-a\): .*signature does not verify"):
        verify(ledger, keys)


def test_entry_deleted(ledger, keys) -> None:
    lines = _lines(ledger)
    del lines[2]
    _write(ledger, lines)
    with pytest.raises(ChainError, match=r"entry 2 \(site hospital-a\): records seq 3 at position 2"):
        verify(ledger, keys)


def test_entry_deleted_and_rechained_by_coordinator(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    del entries[2]  # hospital-a's claim 1
    _rechain(ledger, entries, keyring["coordinator"])
    with pytest.raises(ChainError, match=r"entry 2 \(site hospital-a\).*claims 1\.\.1 of this site are missing"):
        verify(ledger, keys)


def test_two_entries_swapped(ledger, keys) -> None:
    lines = _lines(ledger)
    lines[4], lines[5] = lines[5], lines[4]
    _write(ledger, lines)
    with pytest.raises(ChainError, match=r"entry 4 \(site hospital-b\)"):
        verify(ledger, keys)


def test_same_site_entries_swapped_and_rechained(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    entries[0], entries[2] = entries[2], entries[0]  # hospital-a claims 0 and 1
    _rechain(ledger, entries, keyring["coordinator"])
    with pytest.raises(ChainError, match=r"entry 0 \(site hospital-a\).*claims 0\.\.0 of this site are missing"):
        verify(ledger, keys)


def test_tail_truncated(ledger, keys) -> None:
    lines = _lines(ledger)
    _write(ledger, lines[:-2])
    with pytest.raises(ChainError, match=rf"entry {len(lines) - 2}\b.*entries {len(lines) - 2}\.\.{len(lines) - 1} were truncated"):
        verify(ledger, keys)


def test_signature_replaced(ledger, keys) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    e = entries[1]
    other = entries[3].signed.signature  # a real signature of the same site, over another claim
    tampered = dataclasses.replace(e, signed=SignedClaim(e.claim, other))
    lines = _lines(ledger)
    lines[1] = tampered.line
    _write(ledger, lines)
    result = audit(ledger, keys)
    first = result.first_error
    assert (first.error, first.seq, first.site) == (SignatureError, 1, "hospital-b")
    assert any(f.seq == 1 and f.message == "site signature does not verify" for f in result.findings)


def test_signature_replaced_and_recountersigned(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    e = entries[1]
    entries[1] = dataclasses.replace(e, signed=SignedClaim(e.claim, entries[4].signed.signature))
    _rechain(ledger, entries, keyring["coordinator"])
    with pytest.raises(SignatureError, match=r"entry 1 \(site hospital-b\): site signature does not verify"):
        verify(ledger, keys)


def test_entry_forged_with_another_sites_key(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    victim = entries[2].claim  # hospital-a
    forged_claim = dataclasses.replace(victim, key_id=keyring["hospital-b"].key_id)
    entries[2] = dataclasses.replace(entries[2], signed=sign_claim(forged_claim, keyring["hospital-b"]))
    _rechain(ledger, entries, keyring["coordinator"])
    with pytest.raises(SignatureError, match=r"entry 2 \(site hospital-a\): claim names key .*signed with another key"):
        verify(ledger, keys)


def test_entry_replayed(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    entries.append(entries[0])  # hospital-a's first claim again, validly signed by the site
    _rechain(ledger, entries, keyring["coordinator"])
    n = len(entries) - 1
    with pytest.raises(ChainError, match=rf"entry {n} \(site hospital-a\).*replayed or duplicated"):
        verify(ledger, keys)


def test_cumulative_epsilon_decreased(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    c = entries[2].claim  # hospital-a claim 1
    lower = entries[0].claim.cumulative_epsilon * 0.9
    bad = dataclasses.replace(c, cumulative_epsilon=lower, epsilon=0.0)
    entries[2] = dataclasses.replace(entries[2], signed=sign_claim(bad, keyring["hospital-a"]))  # a lying site
    _rechain(ledger, entries, keyring["coordinator"])
    with pytest.raises(AccountingError, match=r"entry 2 \(site hospital-a\).*cumulative epsilon decreased"):
        verify(ledger, keys)


def test_epsilon_inconsistent_with_mechanism(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    c = entries[0].claim
    mech = dataclasses.replace(c.mechanism, noise_multiplier=c.mechanism.noise_multiplier * 2)  # claims more noise
    entries[0] = dataclasses.replace(entries[0], signed=sign_claim(dataclasses.replace(c, mechanism=mech), keyring["hospital-a"]))
    _rechain(ledger, entries, keyring["coordinator"])
    with pytest.raises(AccountingError, match=r"entry 0 \(site hospital-a\).*exceeds the RDP upper bound"):
        verify(ledger, keys)


@pytest.mark.parametrize(
    ("field", "error"),
    [("prev", ChainError), ("site_sig", SignatureError), ("coordinator_sig", SignatureError), ("site_prev", SignatureError)],
)
def test_one_flipped_byte_gives_the_specific_error(ledger, keys, field, error) -> None:
    lines = _lines(ledger)
    line = bytearray(lines[2])
    marker = f'"{field}":'.encode()
    pos = line.index(marker) + len(marker) + 12  # inside the value
    line[pos] = ord("1") if line[pos] != ord("1") else ord("2")
    lines[2] = bytes(line)
    _write(ledger, lines)
    with pytest.raises(error, match=r"entry 2 \(site hospital-a\)"):
        verify(ledger, keys)


def test_flipped_byte_breaking_the_syntax_is_a_chain_error(ledger, keys) -> None:
    lines = _lines(ledger)
    lines[1] = lines[1].replace(b'"seq":', b'"seq" ', 1)
    _write(ledger, lines)
    with pytest.raises(ChainError, match=r"entry 1\b.*not a valid ledger record"):
        verify(ledger, keys)


def test_worker_processes_give_the_same_findings(ledger, keys) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    lines = _lines(ledger)
    lines[1] = dataclasses.replace(entries[1], signed=SignedClaim(entries[1].claim, entries[3].signed.signature)).line
    _write(ledger, lines)
    one, two = audit(ledger, keys, workers=1), audit(ledger, keys, workers=2)
    assert one.findings == two.findings and not one.ok
    assert {(f.seq, f.message) for f in one.findings if f.error is SignatureError} >= {(1, "site signature does not verify")}


def test_k_below_minimum_is_named(ledger, keys, keyring) -> None:
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    i = next(n for n, e in enumerate(entries) if e.claim.kanon is not None)
    c = entries[i].claim
    bad = dataclasses.replace(c, kanon=dataclasses.replace(c.kanon, k=3, cluster_sizes=(3, 4)))
    entries[i] = dataclasses.replace(entries[i], signed=sign_claim(bad, keyring[c.site]))
    _rechain(ledger, entries, keyring["coordinator"])
    from protocols.errors import KAnonymityError

    with pytest.raises(KAnonymityError, match=rf"entry {i} \(site {c.site}\).*k = 3 is below the recorded minimum"):
        verify(ledger, keys)


def test_sites_of_one_round_that_started_from_different_models_are_named(ledger, keys, keyring) -> None:
    # A coordinator that sent one site another model (say, one trained on that site's earlier
    # release) and recorded it faithfully: each claim verifies alone; check 9 compares them.
    entries = [LedgerEntry.from_line(x) for x in _lines(ledger)]
    first = entries[0].claim
    i = next(n for n, e in enumerate(entries) if e.claim.round == first.round and e.claim.site != first.site)
    c = entries[i].claim
    entries[i] = dataclasses.replace(entries[i], signed=sign_claim(
        dataclasses.replace(c, start_weights_sha256="ee" * 32), keyring[c.site]))
    _rechain(ledger, entries, keyring["coordinator"])
    result = audit(ledger, keys)
    bad = [f for f in result.errors if f.error is IntegrityError]
    assert [(f.seq, f.site) for f in bad] == [(i, c.site)]
    assert "did not train the same global model" in bad[0].message and first.start_weights_sha256 in bad[0].message


def test_the_summary_names_the_model_each_run_started_from(ledger, keys) -> None:
    first = LedgerEntry.from_line(_lines(ledger)[0]).claim
    lines = verify(ledger, keys).summary_lines()
    assert f"OK: run {first.run_id}: round {first.round}, its first recorded training round, started from " \
           f"weights_sha256 {first.start_weights_sha256}" in lines


def test_forged_head_is_a_signature_error(ledger, keys, keyring) -> None:
    from protocols.signing import SigningKey

    lines = _lines(ledger)
    write_head(head_path_for(ledger), sign_head(count=len(lines) + 1, last_hash="0" * 64, key=SigningKey.generate()))
    with pytest.raises(SignatureError, match="ledger: ledger head names coordinator key"):
        verify(ledger, keys)


def test_every_single_byte_flip_is_caught_at_that_entry(ledger, keys) -> None:
    lines = _lines(ledger)
    target = 2
    original = lines[target]
    for pos in range(0, len(original), 13):  # every 13th byte keeps the test fast; all fields are hit
        flipped = bytearray(original)
        flipped[pos] ^= 0x01
        lines[target] = bytes(flipped)
        _write(ledger, lines)
        first = audit(ledger, keys).first_error
        assert first is not None and first.seq == target, (pos, chr(original[pos]), first)
        assert first.error in (ChainError, SignatureError, AccountingError), (pos, first)
    lines[target] = original


def test_unused_base64_bits_cannot_change_a_signature(ledger, keys) -> None:
    lines = _lines(ledger)
    d = decode(lines[-1])
    sig = d["coordinator_sig"]
    import base64
    import string

    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    # The 86th character carries 2 signature bits and 4 unused ones: flip an unused one.
    d["coordinator_sig"] = sig[:85] + alphabet[alphabet.index(sig[85]) ^ 0x01] + "=="

    assert base64.b64decode(d["coordinator_sig"]) == base64.b64decode(sig)
    lines[-1] = encode(d)
    _write(ledger, lines)
    with pytest.raises(SignatureError, match=rf"entry {len(lines) - 1} .*coordinator countersignature does not verify"):
        verify(ledger, keys)
