"""Incremental, resumable sync of one PACS source into its staging folder, then ingest.

One run: find the series that pass the site's filters, list their instances, skip those already
staged (the durable record in the sync state), fetch the rest in batches with at most
``max_concurrency`` connections, write each atomically, and finally update the catalog through
the normal ingest path over the staging folder. A second run transfers nothing; a run that was
interrupted (crash, network loss, Ctrl-C) resumes where it stopped, because every staged instance
is recorded the moment its file is in place. Ingest runs only after a complete sync, so a failed
one (e.g. a wrong password) leaves no catalog entries behind.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from agent.config import PacsEndpoint, PacsFilters, PacsKind, PacsSource, RetrieveMethod, SiteConfig
from agent.pacs.query import InstanceRef, SeriesRef, series_matches
from agent.pacs.staging import Staging
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

BATCH_SIZE = 16  # instances per connection/association before it is released


class PacsClient(Protocol):
    """What sync needs from a protocol client (DICOMweb and DIMSE both provide it)."""

    def find_series(self, filters: PacsFilters) -> list[SeriesRef]: ...

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]: ...

    def retrieve(self, instances: Sequence[InstanceRef], sink: Callable[[bytes], None], *, whole_series: bool = False) -> None: ...


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """What one sync run did (counts only: no identifiers)."""

    source: str
    series_found: int
    instances_found: int
    already_staged: int
    recovered: int
    retrieved: int
    bytes_retrieved: int
    seconds: float
    ingest_summary: str | None = None

    def describe(self) -> str:
        text = (
            f"{self.source}: {self.series_found} series, {self.instances_found} instance(s) match the filters; "
            f"{self.already_staged} already staged, {self.retrieved} retrieved ({self.bytes_retrieved / 1e6:.1f} MB)"
        )
        if self.recovered:
            text += f", {self.recovered} recovered from an interrupted run"
        text += f" in {self.seconds:.1f} s"
        if self.ingest_summary:
            text += f"\n{self.ingest_summary}"
        return text


def state_file(cfg: SiteConfig, source: PacsSource) -> Path:
    """The sync state of a source; it sits beside (not inside) the staging folder ingest scans."""
    return cfg.state.root / "pacs" / f"{source.name}.sync.sqlite"


def make_client(endpoint: PacsEndpoint, *, source: PacsSource | None = None) -> Any:
    """A DICOMweb or DIMSE client for an endpoint (C-GET/C-MOVE settings taken from ``source``)."""
    if endpoint.kind is PacsKind.DICOMWEB:
        from agent.pacs.dicomweb import DicomWebClient

        return DicomWebClient(endpoint)
    from agent.pacs.dimse import DimseClient

    retrieve = source.retrieve if source is not None else RetrieveMethod.C_GET
    move_port = source.move_port if source is not None else None
    return DimseClient(endpoint, retrieve=retrieve, move_port=move_port)


def pacs_sources(cfg: SiteConfig, names: Sequence[str] | None = None) -> list[PacsSource]:
    """The config's PACS sources, optionally only the named ones.

    Raises
    ------
    BadInputError
        If a requested name is not a PACS source of this site.
    """
    sources = [s for s in cfg.sources if isinstance(s, PacsSource)]
    if names:
        known = {s.name for s in sources}
        missing = sorted(set(names) - known)
        if missing:
            raise BadInputError(f"no PACS source named {missing[0]!r}; this site has: {', '.join(sorted(known)) or 'none'}")
        sources = [s for s in sources if s.name in names]
    return sources


def sync_source(cfg: SiteConfig, source: PacsSource, *, client: PacsClient | None = None) -> SyncReport:
    """Bring the staging folder of ``source`` up to date with the PACS (no ingest).

    Raises
    ------
    AuthenticationError
        If the PACS refuses our credentials or AE title; nothing is staged.
    TransportError
        If the PACS is unreachable or a transfer fails; instances staged before the failure are
        kept and recorded, so the next run resumes.
    """
    started = time.monotonic()
    owned = client is None
    client = client or make_client(source.endpoint, source=source)
    try:
        with Staging.open(source.path, state_file(cfg, source)) as staging:
            run_id = staging.start_run()
            status, found, retrieved = "failed", 0, [0, 0]
            try:
                series = [s for s in client.find_series(source.filters) if series_matches(s, source.filters)]
                instances = _list_instances(client, series, source.max_concurrency)
                found = len(instances)
                recovered = staging.reconcile(instances)
                known = staging.known_sop_uids()
                missing = [r for r in instances if r.sop_uid not in known]
                already = found - len(missing) - recovered
                log.info("PACS %s: %d instance(s) match, %d to retrieve", source.name, found, len(missing))
                _fetch(client, _work_items(instances, missing), staging, source.max_concurrency, retrieved, len(missing))
                status = "ok"
            finally:
                staging.end_run(run_id, status=status, found=found, retrieved=retrieved[0])
    finally:
        if owned and hasattr(client, "close"):
            client.close()
    return SyncReport(
        source.name, len(series), found, already, recovered, retrieved[0], retrieved[1], time.monotonic() - started
    )


def sync_and_ingest(cfg: SiteConfig, names: Sequence[str] | None = None) -> list[SyncReport]:
    """Sync every (or the named) PACS source, then update the catalog once over the staging folders.

    Raises
    ------
    AuthenticationError, TransportError
        From :func:`sync_source`; the catalog is not touched when any sync fails.
    """
    reports = [sync_source(cfg, s) for s in pacs_sources(cfg, names)]
    summary = ingest_staged(cfg)
    if summary and reports:
        reports[-1] = dataclasses.replace(reports[-1], ingest_summary=summary)
    return reports


def ingest_staged(cfg: SiteConfig) -> str | None:
    """Run the site's normal ingest (all sources, incl. the staging folders); its summary, if any."""
    try:
        from agent.ingest.pipeline import run_ingest
    except ImportError:
        log.warning("agent.ingest is not available; staged instances are not catalogued yet")
        return None
    report = run_ingest(cfg, progress=False)
    describe = getattr(report, "describe", None)
    return describe() if callable(describe) else str(report)


def _list_instances(client: PacsClient, series: list[SeriesRef], workers: int) -> list[InstanceRef]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        lists = list(pool.map(client.find_instances, series))
    seen: set[str] = set()
    unique = []
    for refs in lists:
        for ref in refs:
            if ref.sop_uid not in seen:
                seen.add(ref.sop_uid)
                unique.append(ref)
    return unique


def _work_items(instances: list[InstanceRef], missing: list[InstanceRef]) -> list[tuple[list[InstanceRef], bool]]:
    """Batches to retrieve: a series none of which is staged yet is fetched whole in one request
    (the usual first sync); what is left of a partly staged series is fetched per instance."""
    totals: dict[str, int] = {}
    for ref in instances:
        totals[ref.series_uid] = totals.get(ref.series_uid, 0) + 1
    by_series: dict[str, list[InstanceRef]] = {}
    for ref in missing:
        by_series.setdefault(ref.series_uid, []).append(ref)
    items: list[tuple[list[InstanceRef], bool]] = []
    for uid, refs in by_series.items():
        if len(refs) == totals[uid] and len(refs) > 1:
            items.append((refs, True))
        else:
            items += [(refs[i : i + BATCH_SIZE], False) for i in range(0, len(refs), BATCH_SIZE)]
    return items


def _fetch(
    client: PacsClient,
    items: list[tuple[list[InstanceRef], bool]],
    staging: Staging,
    workers: int,
    counters: list[int],
    total: int,
) -> None:
    lock = threading.Lock()

    def sink(data: bytes) -> None:
        staging.accept(data)
        with lock:
            counters[0] += 1
            counters[1] += len(data)
            if counters[0] % 100 == 0:
                log.info("retrieved %d of %d instance(s)", counters[0], total)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(client.retrieve, refs, sink, whole_series=whole) for refs, whole in items]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # the first failure propagates; queued batches are cancelled below
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
