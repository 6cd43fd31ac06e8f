"""Synthetic outputs as content-addressed files (sha256 of the canonical ``.npy`` bytes) + SQLite index.

Layout under the store root::

    blobs/ab/abcdef....npy   the samples exactly as hashed (protocols.messages.canonical_array_bytes)
    blobs/cd/cdef....weights site weights as hashed (protocols.messages.canonical_weights_bytes)
    index.sqlite             outputs(sha256, run_id, site, round, method, guarantee, count, ...)

Invariants: a blob's name is the sha256 of its bytes (checked on arrival and by :meth:`verify`);
the same bytes are stored once however often they arrive (dedup), while each arrival with a new
(site, run, round) gets its own index row; blobs are written atomically before their index row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from protocols.atomic_files import write_bytes_atomic
from protocols.errors import BadInputError, IntegrityError
from protocols.messages import array_sha256, canonical_array_bytes, canonical_weights_bytes

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    sha256 TEXT NOT NULL,
    run_id TEXT NOT NULL,
    site TEXT NOT NULL,
    round INTEGER NOT NULL,
    method TEXT NOT NULL,
    guarantee TEXT NOT NULL,
    count INTEGER NOT NULL,
    patch_size INTEGER NOT NULL,
    epsilon REAL,
    delta REAL,
    unit TEXT,
    received_at TEXT NOT NULL,
    PRIMARY KEY (sha256, run_id, site, round)
);
CREATE INDEX IF NOT EXISTS outputs_site ON outputs(site, round);
"""


@dataclasses.dataclass(frozen=True)
class StoredOutput:
    """One indexed synthetic output."""

    sha256: str
    run_id: str
    site: str
    round: int
    method: str
    guarantee: str
    count: int
    patch_size: int
    epsilon: float | None
    delta: float | None
    unit: str | None
    received_at: str


class SyntheticStore:
    """Open (creating if needed) a store under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "index.sqlite")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SyntheticStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / f"{sha256}.npy"

    def add(
        self,
        samples: np.ndarray,
        *,
        claimed_sha256: str,
        run_id: str,
        site: str,
        round: int,
        method: str,
        guarantee: str,
        epsilon: float | None = None,
        delta: float | None = None,
        unit: str | None = None,
        record: Callable[[], None] | None = None,
    ) -> tuple[StoredOutput, bool]:
        """Verify and store ``samples``; returns the index row and whether new bytes were written.

        ``record`` (the release's ledger claim) is called once the samples are verified and before
        anything is written: if it raises, nothing is stored, so the store never holds an output
        the ledger does not name.

        Raises
        ------
        IntegrityError
            If the samples do not hash to ``claimed_sha256``.
        BadInputError
            If the samples are not (n, 2, S, S) float32.
        """
        pairs = samples.ndim == 4 and samples.shape[1] == 2 and samples.shape[2] == samples.shape[3] and samples.dtype == np.float32
        rgb = samples.ndim == 4 and samples.shape[3] == 3 and samples.dtype == np.uint8
        if not (pairs or rgb):
            raise BadInputError(
                f"synthetic outputs must be image+label pairs (n, 2, S, S) float32 or RGB images (n, H, W, 3) uint8, "
                f"got {samples.shape} {samples.dtype}"
            )
        data = canonical_array_bytes(samples)
        actual = hashlib.sha256(data).hexdigest()
        if actual != claimed_sha256:
            raise IntegrityError(
                f"synthetic output from {site} round {round}: sha256 {actual[:12]}... does not match the claimed "
                f"{claimed_sha256[:12]}...; the output was not stored"
            )
        if record is not None:
            record()
        path = self.blob_path(actual)
        new_blob = not path.is_file()
        if new_blob:
            write_bytes_atomic(path, data)
        row = StoredOutput(
            actual, run_id, site, int(round), method, guarantee, int(samples.shape[0]), int(samples.shape[2 if pairs else 1]),
            epsilon, delta, unit, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO outputs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", dataclasses.astuple(row)
            )
        return row, new_blob

    def add_weights(self, weights: dict[str, np.ndarray], *, claimed_sha256: str) -> Path:
        """Keep a site's released weights as ``blobs/ab/<sha256>.weights`` (canonical bytes), verified.

        Raises
        ------
        IntegrityError
            If the weights do not hash to ``claimed_sha256``.
        """
        data = canonical_weights_bytes(weights)
        actual = hashlib.sha256(data).hexdigest()
        if actual != claimed_sha256:
            raise IntegrityError(f"weights hash {actual[:12]}... does not match the claimed {claimed_sha256[:12]}...")
        path = self.root / "blobs" / actual[:2] / f"{actual}.weights"
        if not path.is_file():
            write_bytes_atomic(path, data)
        return path

    def entries(self, *, site: str | None = None) -> list[StoredOutput]:
        sql = "SELECT * FROM outputs" + (" WHERE site = ?" if site else "") + " ORDER BY site, round, sha256"
        return [StoredOutput(*r) for r in self._db.execute(sql, (site,) if site else ())]

    def load(self, sha256: str) -> np.ndarray:
        """The samples stored under ``sha256``, verified against their name.

        Raises
        ------
        IntegrityError
            If the file is missing or its bytes no longer hash to its name.
        """
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"synthetic output {sha256[:12]}... is indexed but its file is missing") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"synthetic output {sha256[:12]}... was modified on disk (hash mismatch)")
        arr = np.load(path, allow_pickle=False)
        return arr

    def verify(self) -> list[str]:
        """Every problem found (missing or modified blobs); empty when the store is intact."""
        problems = []
        for sha in sorted({e.sha256 for e in self.entries()}):
            try:
                self.load(sha)
            except IntegrityError as exc:
                problems.append(str(exc))
        return problems

    def iter_samples(self) -> Iterator[tuple[StoredOutput, np.ndarray]]:
        for entry in self.entries():
            yield entry, self.load(entry.sha256)

    def contains(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    @staticmethod
    def digest(samples: np.ndarray) -> str:
        return array_sha256(samples)
