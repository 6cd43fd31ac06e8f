"""The signed head: the coordinator's statement "the ledger has N entries and ends with hash H".

A hash chain alone cannot reveal a cut-off tail: every prefix of a valid chain is valid. After each
append the coordinator atomically rewrites ``LEDGER.head`` (next to the ledger) with the entry
count and last entry hash, countersigned. An auditor given a ledger shorter than its head knows
entries were removed. The head is written *after* the entry is durable, so a crash leaves a head
that is one entry behind at worst, never ahead: a head that names an entry the ledger has, with
the same hash, is consistent; one naming an entry beyond the end means truncation.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from protocols.atomic_files import write_bytes_atomic
from protocols.canonical import decode, encode
from protocols.errors import BadInputError, SignatureError
from protocols.ledger import GENESIS, LEDGER_SCHEMA
from protocols.signing import SigningKey, VerifyKey


HEAD_DOMAIN = b"anonfed/ledger-head/v1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def head_path_for(ledger_path: Path) -> Path:
    """``ledger.jsonl`` -> ``ledger.jsonl.head``."""
    ledger_path = Path(ledger_path)
    return ledger_path.with_name(ledger_path.name + ".head")


@dataclasses.dataclass(frozen=True)
class SignedHead:
    """Entry count and last entry hash, countersigned by the coordinator."""

    count: int
    last_hash: str  # GENESIS when count == 0
    key_id: str
    signature: str

    def unsigned_dict(self) -> dict[str, Any]:
        return {"schema": LEDGER_SCHEMA, "count": self.count, "last_hash": self.last_hash, "key_id": self.key_id}

    def to_bytes(self) -> bytes:
        d = self.unsigned_dict()
        d["signature"] = self.signature
        return encode(d)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SignedHead":
        """Parse a head file.

        Raises
        ------
        BadInputError
            If the bytes are not a canonical head record.
        """
        d = decode(data.strip())
        if not isinstance(d, dict) or set(d) != {"schema", "count", "last_hash", "key_id", "signature"}:
            raise BadInputError("ledger head: expected fields schema, count, last_hash, key_id, signature")
        if d["schema"] != LEDGER_SCHEMA or type(d["count"]) is not int or d["count"] < 0:
            raise BadInputError(f"ledger head: bad schema or count ({d['schema']!r}, {d['count']!r})")
        if type(d["last_hash"]) is not str or not _HEX64.match(d["last_hash"]):
            raise BadInputError("ledger head: last_hash must be 64 lowercase hex digits")
        if type(d["key_id"]) is not str or type(d["signature"]) is not str:
            raise BadInputError("ledger head: key_id and signature must be strings")
        return cls(d["count"], d["last_hash"], d["key_id"], d["signature"])

    def verify(self, key: VerifyKey) -> None:
        """Check the countersignature.

        Raises
        ------
        SignatureError
            If it was not made by ``key``.
        """
        if self.key_id != key.key_id:
            raise SignatureError(f"ledger head names coordinator key {self.key_id}, expected {key.key_id}")
        key.verify(self.signature, domain=HEAD_DOMAIN, payload=encode(self.unsigned_dict()), what="ledger head signature")


def sign_head(*, count: int, last_hash: str, key: SigningKey) -> SignedHead:
    """A head for a ledger of ``count`` entries ending with ``last_hash``."""
    if count == 0 and last_hash != GENESIS:
        raise ValueError("an empty ledger's head hash is GENESIS")
    draft = SignedHead(count, last_hash, key.key_id, "")
    return dataclasses.replace(draft, signature=key.sign(domain=HEAD_DOMAIN, payload=encode(draft.unsigned_dict())))


def write_head(path: Path, head: SignedHead) -> None:
    """Atomically replace the head file (temp file, fsync, rename, fsync folder)."""
    write_bytes_atomic(Path(path), head.to_bytes() + b"\n", mode=0o644)


def read_head(path: Path) -> SignedHead | None:
    """The head at ``path``, or ``None`` if there is none.

    Raises
    ------
    BadInputError
        If the file exists but is not a valid head.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInputError(f"cannot read ledger head {path}: {exc.strerror}") from exc
    return SignedHead.from_bytes(data)
