"""``anonfed pacs``: sync a site's PACS sources into staging and the catalog; check connectivity."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``anonfed pacs sync`` and ``anonfed pacs ping``."""
    group = sub.add_parser(
        "pacs",
        help="sync studies from the site's PACS (DICOMweb or DIMSE) into the catalog",
        description=(
            "Retrieve instances that match each PACS source's filters into a staging folder under "
            "the site's state_dir (only new instances; interrupted runs resume), then update the "
            "catalog through the normal ingest. Nothing is sent to the PACS except queries."
        ),
    )
    pacs_sub = group.add_subparsers(dest="pacs_command", metavar="PACS_COMMAND", required=True)
    p = pacs_sub.add_parser("sync", help="retrieve new instances and ingest them")
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.add_argument("--source", action="append", help="only this PACS source (repeatable); default all")
    p.add_argument("--no-ingest", action="store_true", help="stage only; do not update the catalog")
    p.set_defaults(handler=_sync)
    p = pacs_sub.add_parser("ping", help="check that each PACS source answers and accepts our credentials")
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.set_defaults(handler=_ping)


def _sync(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.pacs.sync import pacs_sources, sync_and_ingest, sync_source

    cfg = load_site_config(args.config)
    if args.no_ingest:
        reports = [sync_source(cfg, s) for s in pacs_sources(cfg, args.source)]
    else:
        reports = sync_and_ingest(cfg, args.source)
    if not reports:
        print("no PACS sources in this site config (sources with kind: dicomweb or kind: dimse)")
    for report in reports:
        print(report.describe())
    return 0


def _ping(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.pacs.sync import pacs_sources
    from agent.status import probe_endpoint

    cfg = load_site_config(args.config)
    failures = 0
    for source in pacs_sources(cfg):
        ok, detail = probe_endpoint(source)
        failures += not ok
        print(f"{'OK' if ok else 'FAIL'}: {source.name} ({source.endpoint.describe()}){': ' + detail if detail else ''}")
    return 1 if failures else 0
