"""The site catalog: one SQLite file (WAL, foreign keys on, versioned schema).

Tables: ``patients`` (pseudonymous keys only), ``studies``, ``series`` (one decoded unit each:
a DICOM series volume, an enhanced multi-frame object, a SEG, a 2-D image, a NIfTI volume or a
fundus photograph), ``files`` (every scanned file: encrypted path, size, mtime, sha256, status),
``instances`` (which file is which slice of which series), ``quarantine`` and ``runs``.

Consistency: every group of files that forms one unit is written in a single transaction, after
its decoded arrays are in the cache; a crash loses at most the group in flight, and the next run
sees those files as new and ingests them again. No real identifier is stored (see
:mod:`agent.ingest.pseudonym`); paths are stored encrypted and shown only by ``anonfed quarantine``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from agent.ingest.pseudonym import SiteSecrets
from protocols.errors import IntegrityError

SCHEMA_VERSION = 1

VOLUME_KINDS = ("dicom-series", "dicom-enhanced", "nifti-image")  # units that can carry a label volume
IMAGE_2D_KINDS = ("dicom-sc", "dicom-2d", "dicom-op")  # single 2-D images a SEG of images can label

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, summary TEXT);
CREATE TABLE IF NOT EXISTS patients (
    key TEXT PRIMARY KEY, id_source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    key TEXT PRIMARY KEY, patient_key TEXT NOT NULL REFERENCES patients(key));
CREATE TABLE IF NOT EXISTS series (
    key TEXT PRIMARY KEY,
    study_key TEXT REFERENCES studies(key),
    patient_key TEXT REFERENCES patients(key),
    kind TEXT NOT NULL, modality TEXT, angio INTEGER NOT NULL DEFAULT 0,
    shape TEXT, spacing TEXT, geometry TEXT, cache_key TEXT,
    ref_key TEXT, pair_token TEXT, label_key TEXT, label_cache_key TEXT, grade INTEGER,
    status TEXT NOT NULL, run_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path_key TEXT PRIMARY KEY, path_enc BLOB NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, content_hash TEXT, format TEXT, kind TEXT,
    status TEXT NOT NULL, group_key TEXT,
    series_key TEXT REFERENCES series(key) ON DELETE SET NULL,
    parsed_run INTEGER, seen_run INTEGER);
CREATE INDEX IF NOT EXISTS files_group ON files(group_key);
CREATE TABLE IF NOT EXISTS instances (
    file_key TEXT PRIMARY KEY REFERENCES files(path_key) ON DELETE CASCADE,
    series_key TEXT NOT NULL REFERENCES series(key) ON DELETE CASCADE,
    sop_key TEXT, slice_index INTEGER, duplicate INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, path_key TEXT NOT NULL, path_enc BLOB NOT NULL,
    reason_code TEXT NOT NULL, detail TEXT NOT NULL, time TEXT NOT NULL,
    content_hash TEXT, stage TEXT NOT NULL, run_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS quarantine_path ON quarantine(path_key);
"""


@dataclasses.dataclass(frozen=True)
class FileRow:
    path_key: str
    path_enc: bytes
    size: int
    mtime_ns: int
    content_hash: str | None
    format: str | None
    kind: str | None
    status: str
    group_key: str | None


@dataclasses.dataclass(frozen=True)
class QuarantineRow:
    """One quarantined input as shown by ``anonfed quarantine`` (path decrypted)."""

    path: Path
    reason_code: str
    detail: str
    time: str
    content_hash: str | None


@dataclasses.dataclass(frozen=True)
class SeriesRow:
    key: str
    patient_key: str | None
    kind: str
    modality: str | None
    angio: bool
    shape: list[int] | None
    spacing: list[float] | None
    geometry: dict | None
    cache_key: str | None
    ref_key: str | None
    pair_token: str | None
    label_key: str | None
    label_cache_key: str | None
    grade: int | None


class Catalog:
    """Access to the catalog database; use :meth:`open` as a context manager."""

    def __init__(self, conn: sqlite3.Connection, secrets: SiteSecrets) -> None:
        self.conn = conn
        self.secrets = secrets

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path, *, keys_dir: Path | None = None) -> Iterator["Catalog"]:
        """Open (creating if needed) the catalog at ``path``; keys default to ``path.parent/keys``.

        Raises
        ------
        IntegrityError
            If the file is not a catalog or has a schema version this code does not know.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            _migrate(conn, path)
            yield cls(conn, SiteSecrets(keys_dir or path.parent / "keys"))
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"catalog {path.name} is not a readable SQLite catalog ({exc}); move it away and run ingest again") from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------------
    def begin_run(self) -> int:
        with self.transaction() as c:
            return int(c.execute("INSERT INTO runs(started) VALUES (?)", (time.time(),)).lastrowid)

    def finish_run(self, run_id: int, summary: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished=?, summary=? WHERE id=?", (time.time(), json.dumps(summary), run_id))

    # -- files ------------------------------------------------------------------------------
    def file_rows(self) -> dict[str, FileRow]:
        """Every file ever catalogued (including gone ones), by path key."""
        cur = self.conn.execute(
            "SELECT path_key, path_enc, size, mtime_ns, content_hash, format, kind, status, group_key FROM files"
        )
        return {r[0]: FileRow(*r) for r in cur}

    def files_in_groups(self, group_keys: set[str]) -> list[FileRow]:
        rows: list[FileRow] = []
        for key in group_keys:
            cur = self.conn.execute(
                "SELECT path_key, path_enc, size, mtime_ns, content_hash, format, kind, status, group_key "
                "FROM files WHERE group_key=? AND status != 'gone'",
                (key,),
            )
            rows.extend(FileRow(*r) for r in cur)
        return rows

    def touch(self, path_keys: list[str], run_id: int) -> None:
        with self.transaction() as c:
            c.executemany("UPDATE files SET seen_run=? WHERE path_key=?", [(run_id, k) for k in path_keys])

    def update_stat(self, path_key: str, size: int, mtime_ns: int, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE files SET size=?, mtime_ns=?, seen_run=? WHERE path_key=?", (size, mtime_ns, run_id, path_key))

    def mark_gone(self, path_keys: list[str]) -> None:
        """Files no longer on disk: status ``gone``, their slices and quarantine entries dropped."""
        with self.transaction() as c:
            for key in path_keys:
                c.execute("UPDATE files SET status='gone', series_key=NULL WHERE path_key=?", (key,))
                c.execute("DELETE FROM instances WHERE file_key=?", (key,))
                c.execute("DELETE FROM quarantine WHERE path_key=? AND stage != 'scan'", (key,))
            c.execute(
                "UPDATE series SET status='gone' WHERE status='ok' AND key NOT IN "
                "(SELECT series_key FROM files WHERE series_key IS NOT NULL AND status='ok')"
            )

    def upsert_file(self, c: sqlite3.Connection, row: FileRow, *, series_key: str | None, run_id: int) -> None:
        c.execute(
            "INSERT INTO files(path_key, path_enc, size, mtime_ns, content_hash, format, kind, status, group_key, "
            "series_key, parsed_run, seen_run) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(path_key) DO UPDATE SET "
            "size=excluded.size, mtime_ns=excluded.mtime_ns, content_hash=excluded.content_hash, format=excluded.format, "
            "kind=excluded.kind, status=excluded.status, group_key=excluded.group_key, series_key=excluded.series_key, "
            "parsed_run=excluded.parsed_run, seen_run=excluded.seen_run",
            (row.path_key, row.path_enc, row.size, row.mtime_ns, row.content_hash, row.format, row.kind, row.status,
             row.group_key, series_key, run_id, run_id),
        )

    # -- patients, studies, series ----------------------------------------------------------
    def upsert_patient(self, c: sqlite3.Connection, key: str, id_source: str) -> None:
        c.execute("INSERT OR IGNORE INTO patients(key, id_source) VALUES (?, ?)", (key, id_source))

    def upsert_study(self, c: sqlite3.Connection, key: str, patient_key: str) -> None:
        c.execute("INSERT OR IGNORE INTO studies(key, patient_key) VALUES (?, ?)", (key, patient_key))

    def upsert_series(self, c: sqlite3.Connection, run_id: int, **fields: Any) -> None:
        for name in ("shape", "spacing", "geometry"):
            if fields.get(name) is not None:
                fields[name] = json.dumps(fields[name])
        fields["run_id"] = run_id
        fields.setdefault("status", "ok")
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{k}=excluded.{k}" for k in fields if k != "key")
        c.execute(f"INSERT INTO series({cols}) VALUES ({marks}) ON CONFLICT(key) DO UPDATE SET {updates}", tuple(fields.values()))

    def set_series_fields(self, c: sqlite3.Connection, key: str, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        c.execute(f"UPDATE series SET {sets} WHERE key=?", (*fields.values(), key))

    def add_instance(self, c: sqlite3.Connection, file_key: str, series_key: str, sop_key: str | None, slice_index: int | None, duplicate: bool) -> None:
        c.execute(
            "INSERT OR REPLACE INTO instances(file_key, series_key, sop_key, slice_index, duplicate) VALUES (?,?,?,?,?)",
            (file_key, series_key, sop_key, slice_index, int(duplicate)),
        )

    def live_series(self, *kinds: str, include_held: bool = False) -> list[SeriesRow]:
        """Series with status ok (optionally only the given kinds; ``include_held`` adds the
        units a pairing problem excluded, for the pairing step to re-evaluate)."""
        statuses = "('ok', 'held')" if include_held else "('ok')"
        sql = (
            "SELECT key, patient_key, kind, modality, angio, shape, spacing, geometry, cache_key, ref_key, pair_token, "
            f"label_key, label_cache_key, grade FROM series WHERE status IN {statuses}"
        )
        args: tuple[str, ...] = ()
        if kinds:
            sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            args = kinds
        out = []
        for r in self.conn.execute(sql + " ORDER BY key", args):
            out.append(
                SeriesRow(r[0], r[1], r[2], r[3], bool(r[4]), _json(r[5]), _json(r[6]), _json(r[7]), r[8], r[9], r[10],
                          r[11], r[12], r[13])
            )
        return out

    def units_by_instance(self, *kinds: str) -> dict[str, SeriesRow]:
        """Live (or held) units of the given kinds by the keyed SOP Instance UID of their file.

        Two files with one SOP instance (copies) map to the unit with the smaller key, so the
        choice does not depend on scan order.
        """
        units = {row.key: row for row in self.live_series(*kinds, include_held=True)}
        out: dict[str, SeriesRow] = {}
        for sop_key, series_key in self.conn.execute(
            "SELECT sop_key, series_key FROM instances WHERE sop_key IS NOT NULL ORDER BY series_key DESC"
        ):
            if series_key in units:
                out[sop_key] = units[series_key]
        return out

    def series_files(self, series_key: str) -> list[str]:
        """Path keys of the current files of a series."""
        return [r[0] for r in self.conn.execute("SELECT path_key FROM files WHERE series_key=? AND status='ok'", (series_key,))]

    # -- quarantine -------------------------------------------------------------------------
    def add_quarantine(self, c: sqlite3.Connection, *, path_key: str, path_enc: bytes, reason: str, detail: str,
                       content_hash: str | None, stage: str, run_id: int) -> None:
        c.execute(
            "INSERT INTO quarantine(path_key, path_enc, reason_code, detail, time, content_hash, stage, run_id) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (path_key, path_enc, reason, detail, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), content_hash, stage, run_id),
        )

    def clear_quarantine(self, c: sqlite3.Connection, *, path_key: str | None = None, stage: str | None = None) -> None:
        if path_key is not None:
            c.execute("DELETE FROM quarantine WHERE path_key=? AND stage != 'pair'", (path_key,))
        if stage is not None:
            c.execute("DELETE FROM quarantine WHERE stage=?", (stage,))

    def path_keys_with_reason(self, reason: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT path_key FROM quarantine WHERE reason_code=?", (reason,))}

    def quarantined(self) -> list[QuarantineRow]:
        """Every current quarantine entry, paths decrypted, ordered by reason then path."""
        rows = [
            QuarantineRow(self.secrets.decrypt_path(r[0]), r[1], r[2], r[3], r[4])
            for r in self.conn.execute("SELECT path_enc, reason_code, detail, time, content_hash FROM quarantine")
        ]
        return sorted(rows, key=lambda r: (r.reason_code, str(r.path)))

    # -- summaries --------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """Current totals: files by kind, series by kind, quarantine entries by reason."""
        q = self.conn.execute
        return {
            "files": dict(q("SELECT kind, COUNT(*) FROM files WHERE status='ok' GROUP BY kind ORDER BY kind").fetchall()),
            "series": dict(q("SELECT kind, COUNT(*) FROM series WHERE status='ok' GROUP BY kind ORDER BY kind").fetchall()),
            "quarantine": dict(q("SELECT reason_code, COUNT(*) FROM quarantine GROUP BY reason_code ORDER BY reason_code").fetchall()),
            "patients": {"total": q("SELECT COUNT(*) FROM patients").fetchone()[0]},
        }


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.executescript(_SCHEMA)
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        conn.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        raise IntegrityError(
            f"catalog {path.name} has schema version {row[0]}, this agent expects {SCHEMA_VERSION}; "
            "use the matching agent version or rebuild the catalog"
        )


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None
