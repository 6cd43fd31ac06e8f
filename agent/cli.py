"""Site-side subcommands of ``anonfed`` (hospital IT and researchers).

Only argument parsing lives here; every handler imports its implementation lazily, so
``anonfed --help`` stays fast and auditor commands never load torch.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# Feature areas that add their own subcommands: each module has ``register(sub)``.
# Add one line per area rather than growing this file.
_SUBCOMMAND_MODULES: tuple[str, ...] = ("agent.ledger.cli", "agent.training.cli", "agent.pacs.cli", "agent.status_cli", "agent.export.cli", "agent.flower_client.cli", "agent.ksalsa.cli", "agent.stylegan.cli")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the agent's subcommands to the ``anonfed`` parser."""
    p = sub.add_parser(
        "phantoms",
        help="write the phantom consortium (TOF-MRA and fundus) as DICOM, NIfTI and PNG",
        description=(
            "Generate procedural phantom patients, deterministically from a seed: TOF-MRA-like "
            "volumes with exact vessel masks (DICOM MR series + NIfTI) and fundus photographs with "
            "a DR grade (DICOM OP + PNG with a grades CSV), one folder per site, plus a site "
            "config for each. These are the embedded default data; no download is needed."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per site)")
    p.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed gives identical pixel data")
    p.add_argument("--tof-patients", type=int, default=6, help="TOF-MRA patients per site (default 6)")
    p.add_argument("--fundus-patients", type=int, default=12, help="fundus patients per site (default 12)")
    p.add_argument("--volume-size", type=int, default=64, help="TOF volume edge in voxels (default 64)")
    p.add_argument("--fundus-size", type=int, default=192, help="fundus image edge in pixels (default 192)")
    p.set_defaults(handler=_phantoms)

    p = sub.add_parser(
        "ingest",
        help="scan the site's sources into the catalog; quarantine what cannot be used",
        description=(
            "Build or update the site catalog (SQLite) from the sources in the site config: "
            "DICOM (single-frame series, enhanced multi-frame, compressed, SEG, OP, SC), NIfTI "
            "with label volumes, PNG/JPEG fundus with a grades CSV. Bad inputs are quarantined with "
            "a reason and skipped; originals are never modified; unchanged files are skipped on "
            "re-runs."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.set_defaults(handler=_ingest)

    p = sub.add_parser("quarantine", help="list quarantined inputs and why")
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.set_defaults(handler=_quarantine)

    p = sub.add_parser("check-config", help="validate a site YAML file and print the resolved settings")
    p.add_argument("config", type=Path, help="site YAML file")
    p.set_defaults(handler=_check_config)

    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)


def _phantoms(args: argparse.Namespace) -> int:
    from agent.phantoms.consortium import ConsortiumSpec, write_consortium

    spec = ConsortiumSpec(
        sites=args.sites,
        seed=args.seed,
        tof_patients=args.tof_patients,
        fundus_patients=args.fundus_patients,
        volume_size=args.volume_size,
        fundus_size=args.fundus_size,
    )
    summary = write_consortium(args.out, spec)
    print(summary.describe())
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.ingest.pipeline import run_ingest

    cfg = load_site_config(args.config)
    report = run_ingest(cfg, progress=True)
    print(report.describe())
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.ingest.catalog import Catalog

    cfg = load_site_config(args.config)
    with Catalog.open(cfg.state.catalog) as catalog:
        rows = catalog.quarantined()
    for row in rows:
        print(f"{row.reason_code:<24} {row.path}  ({row.detail})")
    print(f"{len(rows)} quarantined input(s)")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from agent.config import load_site_config

    cfg = load_site_config(args.config)
    print(cfg.describe())
    return 0
