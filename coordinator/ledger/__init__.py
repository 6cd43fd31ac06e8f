"""The coordinator's privacy ledger: append-only, hash-chained, every entry signed twice.

Public API (plain Python; the Flower ServerApp only calls these)::

    from coordinator.ledger import Ledger
    from protocols.ledger import SignedClaim
    from protocols.signing import load_private_key, load_key_directory

    key = load_private_key(Path("keys/coordinator.key"), passphrase=None)
    site_keys = load_key_directory(Path("keys/sites"))          # {"hospital-a": VerifyKey, ...}
    with Ledger.open(Path("state/ledger.jsonl"), key) as ledger:
        signed = SignedClaim.from_bytes(claim_bytes)              # from the site's reply
        entry = ledger.append_site_claim(signed, site_keys[signed.claim.site])
        ledger.cumulative_epsilon("hospital-a", "tof")            # what the budget tracker reads
        ledger.site_state("hospital-a").next_seq                  # to ask a site to resend claims
        ledger.find_claim("hospital-a", 3)                        # entry holding that claim, or None

Re-sending an identical signed claim returns the recorded entry (safe retries). Refusals raise
SignatureError, ChainError (replayed, equivocating or missing claims), AccountingError (epsilon
inconsistent with the site's history or with the dp-accounting recomputation) or KAnonymityError,
each naming the site and its claim number; nothing is appended then.

Files: ``ledger.jsonl`` (one canonical JSON line per :class:`protocols.ledger.LedgerEntry`) and
``ledger.jsonl.head`` (signed entry count and last hash, see :mod:`coordinator.ledger.head`).
Modules: :mod:`~coordinator.ledger.storage` (write-ahead file, torn tails),
:mod:`~coordinator.ledger.claim_checks` (sequence and epsilon checks shared with the auditor),
:mod:`~coordinator.ledger.writer` (the :class:`Ledger`).
"""

from coordinator.ledger.writer import Ledger

__all__ = ["Ledger"]
