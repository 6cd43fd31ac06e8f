"""``anonfed ingest``: scan the sources, ingest what changed, pair labels, report.

Steps of one run:

1. **Scan** (:mod:`agent.ingest.scanner`): walk the sources, quarantine loops, empty, oversized
   and unreadable entries.
2. **Detect changes**: a file whose (size, mtime_ns) match the catalog is skipped without being
   opened (files quarantined as ``ingest-error``, and files whose cache entry was deleted, are
   re-ingested on every run). Otherwise it is read (read-only), hashed (sha256) and, if the hash matches, only its
   stat is updated. New or modified files are sniffed and grouped (all slices of a DICOM series
   form one group), then their bytes are dropped; files missing from disk are marked ``gone``.
3. **Ingest groups** (:mod:`agent.ingest.units`): every group touched by a change is read again
   (so memory holds one group at a time; the hash stored is that of the bytes decoded), decoded,
   checked and cached, then written in **one transaction**. Failures become quarantine entries;
   the run continues.
4. **Pair** (:mod:`agent.ingest.pairing`): SEG and NIfTI labels, fundus grades.

Nothing identifying is logged: only counts, reason codes and key prefixes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from agent.config import SiteConfig
from agent.ingest import dicom_files, nifti_files
from agent.ingest.cache import ArrayCache
from agent.ingest.catalog import IMAGE_2D_KINDS, VOLUME_KINDS, Catalog, FileRow
from agent.ingest.nifti_files import ManifestRow
from agent.ingest.pairing import Pairing
from agent.ingest.pseudonym import SiteSecrets
from agent.ingest.quarantine import Quarantined, Reason
from agent.ingest.scanner import HEAD_BYTES, FileFormat, FoundFile, ScanProblem, scan_sources, sniff_format
from agent.ingest.units import FileOutcome, Member, Outcome, UnitContext, ingest_dicom_series, ingest_single_file, series_group_key

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IngestReport:
    """What one run did (this run's work) and what the catalog now holds (totals)."""

    files_scanned: int = 0
    files_unchanged: int = 0
    files_rehashed: int = 0  # stat changed, content did not
    files_parsed: int = 0  # files decoded this run (0 on a re-run with nothing changed)
    files_gone: int = 0
    groups_ingested: int = 0
    label_volumes_built: int = 0
    image_labels_built: int = 0
    files_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    units_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    patients: int = 0
    labeled_volumes: int = 0
    labeled_images_2d: int = 0  # single 2-D images with a SEG label (e.g. synthetic TOF patches)
    graded_images: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [
            f"ingest: {self.files_scanned} files scanned in {self.seconds:.1f} s: {self.files_parsed} parsed, "
            f"{self.files_unchanged} unchanged, {self.files_rehashed} re-hashed, {self.files_gone} gone",
            f"catalog: {self.patients} patients, {self.labeled_volumes} labeled volumes, {self.labeled_images_2d} labeled 2-D images, "
            f"{self.graded_images} graded fundus images",
            "catalogued files by kind:",
        ]
        lines += [f"  {k:<20} {v}" for k, v in sorted(self.files_by_kind.items())]
        lines.append("catalogued units (volumes/images) by kind:")
        lines += [f"  {k:<20} {v}" for k, v in sorted(self.units_by_kind.items())]
        total = sum(self.quarantined_by_reason.values())
        lines.append(f"quarantined: {total} (see `anonfed quarantine`)")
        lines += [f"  {k:<28} {v}" for k, v in sorted(self.quarantined_by_reason.items())]
        return "\n".join(lines)


def run_ingest(cfg: SiteConfig, progress: bool = False) -> IngestReport:
    """Build or update the site catalog from ``cfg.sources`` (see the module docstring).

    Parameters
    ----------
    cfg
        The validated site configuration (sources, state paths, ingest limits).
    progress
        Show tqdm progress bars over files and groups (only when stderr is a terminal); the
        run is logged either way.

    Returns
    -------
    IngestReport
        This run's work and the catalog totals; ``describe()`` renders it for the CLI.

    Raises
    ------
    IntegrityError
        If the catalog has an unknown schema version, or does not belong to ``state/keys``.
        Bad *inputs* never raise: they are quarantined and the run goes on.
    """
    started = time.perf_counter()
    report = IngestReport()
    cache = ArrayCache(cfg.state.cache)
    with _exclusive_run(cfg.state.root), dicom_files.quiet_pydicom(), \
            Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        run_id = catalog.begin_run()
        manifests, config_csvs = _load_config_tables(cfg)
        ctx = _unit_context(catalog.secrets, cache, manifests, config_csvs)

        scan = scan_sources(cfg.sources, cfg.ingest, exclude=cfg.state.root)
        report.files_scanned = len(scan.files)
        log.info("scanned %d files (%d walk problems)", len(scan.files), len(scan.problems))
        _record_scan_problems(catalog, scan.problems, run_id)

        changed, groups = _detect_changes(catalog, scan.files, report, run_id, progress, _missing_cache(catalog, cache))
        for group, keys in tqdm(sorted(groups.items()), desc="ingesting", unit="group", disable=None if progress else True):
            members = _group_members(catalog, group, [changed[k] for k in sorted(keys)], run_id)
            if not members:
                continue
            report.files_parsed += len(members)
            outcome = _ingest_group(group, members, ctx)
            _write_outcome(catalog, outcome, group, run_id)
            report.groups_ingested += 1
        _drop_empty_series(catalog)

        pairing = Pairing(catalog, cache, run_id)
        pairing.pair_segs()
        pairing.pair_nifti([r for rows in manifests.values() for r in rows], _path_keys_of(manifests, catalog.secrets))
        pairing.apply_grades([s.fundus_grades_csv for s in cfg.sources if s.fundus_grades_csv is not None])
        pairing.write()
        report.label_volumes_built = pairing.label_volumes_built
        report.image_labels_built = pairing.image_labels_built

        _fill_totals(report, catalog)
        report.seconds = time.perf_counter() - started
        catalog.finish_run(run_id, dataclasses.asdict(report))
    log.info("ingest done: %d parsed, %d unchanged, %d quarantined in total",
             report.files_parsed, report.files_unchanged, sum(report.quarantined_by_reason.values()))
    return report


@contextlib.contextmanager
def _exclusive_run(state_root: Path) -> Iterator[None]:
    """One ingest at a time per site: a second run waits (it would only redo the same work)."""
    state_root.mkdir(parents=True, exist_ok=True)
    with open(state_root / "ingest.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another ingest of this site is running; waiting for it to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _missing_cache(catalog: Catalog, cache: ArrayCache) -> set[str]:
    """Files of catalogued units whose cache entry was deleted: they are re-ingested (self-healing)."""
    stale: set[str] = set()
    for series in catalog.live_series(include_held=True):
        if series.cache_key and not cache.has(series.cache_key):
            stale.update(catalog.series_files(series.key))
    if stale:
        log.warning("%d files have no cache entry any more; re-ingesting them", len(stale))
    return stale


def _detect_changes(
    catalog: Catalog, found_files: list[FoundFile], report: IngestReport, run_id: int, progress: bool, redo: set[str]
) -> tuple[dict[str, Member], dict[str, set[str]]]:
    """New or modified files (bytes dropped after hashing) and the groups that must be re-ingested.

    ``redo`` lists files to re-ingest although unchanged. Marks vanished files ``gone`` and adds
    their groups (a series that lost a slice is rebuilt).
    """
    secrets = catalog.secrets
    known = catalog.file_rows()
    # an upgraded agent may succeed where the last one failed
    retry = redo | catalog.path_keys_with_reason(Reason.INGEST_ERROR.value)
    changed: dict[str, Member] = {}
    groups: dict[str, set[str]] = {}
    unchanged: list[str] = []
    live_keys: set[str] = set()
    for found in tqdm(found_files, desc="checking", unit="file", disable=None if progress else True):
        key = secrets.path_key(found.path)
        live_keys.add(key)
        row = known.get(key)
        fresh = key not in retry
        if fresh and row is not None and row.status != "gone" and (row.size, row.mtime_ns) == (found.size, found.mtime_ns):
            unchanged.append(key)
            continue
        member = _read_member(found.path, key, secrets, catalog, run_id)
        if member is None:
            continue
        if fresh and row is not None and row.status != "gone" and row.content_hash == member.content_hash:
            catalog.update_stat(key, member.size, member.mtime_ns, run_id)
            report.files_rehashed += 1
            continue
        group = _group_of(member, secrets)
        member.data = b""  # re-read when its group is ingested: memory stays bounded by one group
        changed[key] = member
        groups.setdefault(group, set()).add(key)
        if row is not None and row.group_key and row.group_key != group:
            groups.setdefault(row.group_key, set())
    report.files_unchanged = len(unchanged) + report.files_rehashed
    catalog.touch(unchanged, run_id)
    gone = [k for k, r in known.items() if r.status != "gone" and k not in live_keys]
    for key in gone:
        if known[key].group_key:
            groups.setdefault(known[key].group_key, set())
    catalog.mark_gone(gone)
    report.files_gone = len(gone)
    return changed, groups


def _group_members(catalog: Catalog, group: str, changed: list[Member], run_id: int) -> list[Member]:
    """Read every current file of a group: the changed ones, and for a series its unchanged slices."""
    members = [m for m in (_read_member(c.path, c.path_key, catalog.secrets, catalog, run_id) for c in changed) if m]
    if group.startswith("s"):
        done = {c.path_key for c in changed}
        for row in catalog.files_in_groups({group}):
            if row.path_key not in done:
                extra = _reread(row, catalog.secrets, catalog, run_id)
                if extra is not None:
                    members.append(extra)
    return members


def _ingest_group(group: str, members: list[Member], ctx: UnitContext) -> Outcome:
    try:
        return ingest_dicom_series(members, ctx, group) if group.startswith("s") else ingest_single_file(members[0], ctx)
    except Exception as exc:  # noqa: BLE001 - one bad group must not stop the site's ingest
        # Only the exception type is logged: library messages may quote header values.
        log.error("unexpected %s while ingesting group %s; its files are quarantined", type(exc).__name__, group[:13])
        detail = f"unexpected {type(exc).__name__} while ingesting; please report it with the agent log"
        return Outcome([FileOutcome(m, "unknown", "quarantined", Reason.INGEST_ERROR, detail) for m in members])


def _unit_context(secrets: SiteSecrets, cache: ArrayCache, manifests: dict[Path, list[ManifestRow]],
                  config_csvs: dict[Path, str]) -> UnitContext:
    labels = {row.label for rows in manifests.values() for row in rows if row.label is not None}
    return UnitContext(secrets, cache, config_csvs, _pair_token_fn(secrets, manifests), _manifest_patient_fn(manifests),
                       lambda path: path.resolve() in labels)


def _load_config_tables(cfg: SiteConfig) -> tuple[dict[Path, list[ManifestRow]], dict[Path, str]]:
    manifests: dict[Path, list[ManifestRow]] = {}
    csvs: dict[Path, str] = {}
    for source in cfg.sources:
        if source.fundus_grades_csv is not None:
            csvs[source.fundus_grades_csv.resolve()] = "grades-csv"
        if source.nifti_manifest is not None:
            path = source.nifti_manifest.resolve()
            csvs[path] = "nifti-manifest"
            try:
                manifests[path] = nifti_files.read_manifest(path)
            except Quarantined as exc:
                log.warning("NIfTI manifest ignored: %s", exc.detail)
                manifests[path] = []
    return manifests, csvs


def _pair_token_fn(secrets: SiteSecrets, manifests: dict[Path, list[ManifestRow]]) -> Callable[[Path], str]:
    by_file: dict[Path, Path] = {}
    for rows in manifests.values():
        for row in rows:
            by_file[row.image] = row.image
            if row.label is not None:
                by_file[row.label] = row.image

    def token(path: Path) -> str:
        resolved = path.resolve()
        if resolved in by_file:
            return secrets.uid_key("nifti-pair", str(by_file[resolved]))
        stem = nifti_files.image_stem_of_label(path.name) if nifti_files.is_label_name(path.name) else nifti_files.nifti_stem(path.name)
        return secrets.uid_key("nifti-pair", str(resolved.parent / stem))

    return token


def _manifest_patient_fn(manifests: dict[Path, list[ManifestRow]]) -> Callable[[Path], str | None]:
    patients: dict[Path, str] = {}
    for rows in manifests.values():
        for row in rows:
            if row.patient:
                patients[row.image] = row.patient
                if row.label is not None:
                    patients[row.label] = row.patient
    return lambda path: patients.get(path.resolve())


def _path_keys_of(manifests: dict[Path, list[ManifestRow]], secrets: SiteSecrets) -> dict[Path, str]:
    return {row.image: secrets.path_key(row.image) for rows in manifests.values() for row in rows}


def _record_scan_problems(catalog: Catalog, problems: list[ScanProblem], run_id: int) -> None:
    secrets = catalog.secrets
    with catalog.transaction() as c:
        catalog.clear_quarantine(c, stage="scan")
        for p in problems:
            key = secrets.path_key(p.path)
            catalog.add_quarantine(c, path_key=key, path_enc=secrets.encrypt_path(p.path), reason=p.reason.value,
                                   detail=p.detail, content_hash=None, stage="scan", run_id=run_id)
    for p in problems:
        log.warning("quarantined while scanning: %s", p.reason.value)


def _read_member(path: Path, key: str, secrets: SiteSecrets, catalog: Catalog, run_id: int) -> Member | None:
    try:
        with open(path, "rb") as fh:  # read-only; the bytes are hashed and parsed from memory
            st = os.fstat(fh.fileno())
            data = fh.read()
    except OSError as exc:
        with catalog.transaction() as c:
            catalog.clear_quarantine(c, path_key=key)
            catalog.add_quarantine(c, path_key=key, path_enc=secrets.encrypt_path(path), reason=Reason.UNREADABLE.value,
                                   detail=f"cannot be read ({exc.strerror})", content_hash=None, stage="parse", run_id=run_id)
        log.warning("quarantined: unreadable file %s", key[:12])
        return None
    fmt = sniff_format(data[:HEAD_BYTES], path.name)
    return Member(path, key, len(data), st.st_mtime_ns, hashlib.sha256(data).hexdigest(), fmt, data)


def _reread(row: FileRow, secrets: SiteSecrets, catalog: Catalog, run_id: int) -> Member | None:
    path = secrets.decrypt_path(row.path_enc)
    if not path.is_file():
        return None
    return _read_member(path, row.path_key, secrets, catalog, run_id)


def _group_of(member: Member, secrets: SiteSecrets) -> str:
    """``s<series key>`` for a slice of a single-frame DICOM series, ``f<path key>`` otherwise."""
    if member.fmt is FileFormat.DICOM:
        series_uid = dicom_files.slice_series_uid(member.data)
        if series_uid:
            return series_group_key(secrets, series_uid)
    return "f" + member.path_key


def _write_outcome(catalog: Catalog, outcome: Outcome, group: str, run_id: int) -> None:
    """Write one group's rows in a single transaction (its cache entries already exist)."""
    series_key = outcome.series["key"] if outcome.series else None
    with catalog.transaction() as c:
        if outcome.patient is not None:
            catalog.upsert_patient(c, *outcome.patient)
            catalog.upsert_study(c, outcome.study_key or "", outcome.patient[0])
        if outcome.series is not None:
            catalog.upsert_series(c, run_id, **outcome.series, status="ok")
            c.execute("DELETE FROM instances WHERE series_key=?", (series_key,))
        for fo in outcome.files:
            m = fo.member
            row = FileRow(m.path_key, catalog.secrets.encrypt_path(m.path), m.size, m.mtime_ns, m.content_hash, m.fmt.value,
                          fo.kind, fo.status, group)
            ok = fo.status == "ok"
            catalog.upsert_file(c, row, series_key=series_key if ok else None, run_id=run_id)
            catalog.clear_quarantine(c, path_key=m.path_key)
            if ok and series_key is not None:
                catalog.add_instance(c, m.path_key, series_key, fo.sop_key, fo.slice_index, fo.duplicate)
            elif not ok:
                c.execute("DELETE FROM instances WHERE file_key=?", (m.path_key,))
                catalog.add_quarantine(c, path_key=m.path_key, path_enc=row.path_enc, reason=fo.reason.value,  # type: ignore[union-attr]
                                       detail=fo.detail, content_hash=m.content_hash, stage="parse", run_id=run_id)
    for fo in outcome.files:
        if fo.status != "ok":
            log.warning("quarantined %s: file %s (sha256 %s)", fo.reason.value, fo.member.path_key[:12], fo.member.content_hash[:12])  # type: ignore[union-attr]


def _drop_empty_series(catalog: Catalog) -> None:
    with catalog.transaction() as c:
        c.execute(
            "UPDATE series SET status='gone' WHERE status IN ('ok', 'held') AND key NOT IN "
            "(SELECT series_key FROM files WHERE series_key IS NOT NULL AND status='ok')"
        )


def _fill_totals(report: IngestReport, catalog: Catalog) -> None:
    counts = catalog.counts()
    report.files_by_kind = counts["files"]
    report.units_by_kind = counts["series"]
    report.quarantined_by_reason = counts["quarantine"]
    report.patients = counts["patients"]["total"]
    q = catalog.conn.execute
    labeled = "SELECT COUNT(*) FROM series WHERE status='ok' AND label_cache_key IS NOT NULL AND kind IN ({})"
    report.labeled_volumes = q(labeled.format(", ".join("?" * len(VOLUME_KINDS))), VOLUME_KINDS).fetchone()[0]
    report.labeled_images_2d = q(labeled.format(", ".join("?" * len(IMAGE_2D_KINDS))), IMAGE_2D_KINDS).fetchone()[0]
    report.graded_images = q("SELECT COUNT(*) FROM series WHERE status='ok' AND grade IS NOT NULL").fetchone()[0]
