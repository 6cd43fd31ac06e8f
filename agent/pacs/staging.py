"""The site-local staging folder a PACS is synced into, and the durable record of what arrived.

Invariants
----------
- A file appears in the staging folder only complete: written to a temp file in the same folder,
  fsync'd, then renamed (``os.replace``). An interrupted sync leaves at most stray temp files
  (``.<name>.<random>.tmp``), which are removed on the next run and never ingested (ingest skips dot-files).
- An instance is recorded in the sync state (SQLite, outside the staging folder so ingest never
  sees it) only after its file is in place, so the record never claims more than the disk holds.
  A crash between rename and record is repaired on the next run by reading the file back.
- File names are hashes of the UIDs: the staging tree reveals nothing about the studies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import pydicom
from pydicom.errors import InvalidDicomError

from agent.pacs.query import InstanceRef
from protocols.atomic_files import TEMP_GLOB, write_bytes_atomic
from protocols.errors import TransportError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid     TEXT PRIMARY KEY,
    series_uid  TEXT NOT NULL,
    study_uid   TEXT NOT NULL,
    file        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    status     TEXT NOT NULL,
    found      INTEGER NOT NULL DEFAULT 0,
    retrieved  INTEGER NOT NULL DEFAULT 0
);
"""


def _hash(uid: str, n: int) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:n]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class StagedInstance:
    """One instance written to the staging folder."""

    ref: InstanceRef
    path: Path
    size: int


class Staging:
    """Staging folder plus sync state for one PACS source; safe to call from several threads."""

    def __init__(self, folder: Path, state_file: Path) -> None:
        self.folder = folder
        self.state_file = state_file
        folder.mkdir(parents=True, exist_ok=True)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(state_file, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._remove_partial_files()

    @classmethod
    @contextlib.contextmanager
    def open(cls, folder: Path, state_file: Path) -> Iterator["Staging"]:
        staging = cls(folder, state_file)
        try:
            yield staging
        finally:
            staging.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- what we have ---------------------------------------------------------------------------
    def known_sop_uids(self) -> set[str]:
        """SOP Instance UIDs already retrieved (and still on disk, see :meth:`reconcile`)."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT sop_uid FROM instances")}

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def path_for(self, ref: InstanceRef) -> Path:
        return self.folder / _hash(ref.study_uid, 16) / _hash(ref.series_uid, 16) / f"{_hash(ref.sop_uid, 32)}.dcm"

    def reconcile(self, wanted: list[InstanceRef]) -> int:
        """Record wanted instances whose file is on disk but not in the state (crash after rename).

        Also forgets recorded instances whose file was deleted, so they are fetched again.
        Returns the number of instances recovered from disk.
        """
        recovered = 0
        with self._lock:
            rows = list(self._db.execute("SELECT sop_uid, file FROM instances"))
        gone = [sop for sop, file in rows if not (self.folder / file).is_file()]
        if gone:
            log.warning("%d staged file(s) were removed by hand; they will be fetched again", len(gone))
            with self._lock:
                self._db.executemany("DELETE FROM instances WHERE sop_uid = ?", [(s,) for s in gone])
        known = self.known_sop_uids()
        for ref in wanted:
            if ref.sop_uid in known:
                continue
            path = self.path_for(ref)
            if path.is_file() and _sop_uid_of(path.read_bytes()) == ref.sop_uid:
                self._record(ref, path, path.stat().st_size)
                recovered += 1
        return recovered

    # -- receiving ------------------------------------------------------------------------------
    def accept(self, data: bytes) -> StagedInstance:
        """Write one received Part 10 instance atomically and record it.

        Raises
        ------
        TransportError
            If the bytes are not a DICOM instance with study, series and SOP instance UIDs (a
            truncated transfer): nothing is written.
        """
        try:
            ds = pydicom.dcmread(
                io.BytesIO(data),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"],
            )
            ref = InstanceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.get("SOPClassUID", "")))
        except (InvalidDicomError, AttributeError, EOFError, ValueError) as exc:
            raise TransportError(
                f"received {len(data)} bytes that are not a complete DICOM instance; nothing was staged, "
                "the next sync retries it"
            ) from exc
        path = self.path_for(ref)
        write_bytes_atomic(path, data)
        self._record(ref, path, len(data))
        return StagedInstance(ref, path, len(data))

    def _record(self, ref: InstanceRef, path: Path, size: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                (ref.sop_uid, ref.series_uid, ref.study_uid, str(path.relative_to(self.folder)), size, _now()),
            )

    # -- run history (for `anonfed agent status`) -------------------------------------------------
    def start_run(self) -> int:
        with self._lock:
            cur = self._db.execute("INSERT INTO runs (started_at, status) VALUES (?, 'running')", (_now(),))
            return int(cur.lastrowid)

    def end_run(self, run_id: int, *, status: str, found: int, retrieved: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET ended_at = ?, status = ?, found = ?, retrieved = ? WHERE id = ?",
                (_now(), status, found, retrieved, run_id),
            )

    def last_run(self) -> dict[str, object] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT started_at, ended_at, status, found, retrieved FROM runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("started_at", "ended_at", "status", "found", "retrieved"), row))

    def _remove_partial_files(self) -> None:
        for part in self.folder.rglob(TEMP_GLOB):
            part.unlink(missing_ok=True)


def _sop_uid_of(data: bytes) -> str | None:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not recovered
        return None
