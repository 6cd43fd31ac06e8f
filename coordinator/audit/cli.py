"""``anonfed audit verify`` and ``anonfed audit report``: the auditor's commands.

Only protocols, the ledger reader and dp-accounting are loaded (no torch, no site code).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocols.errors import BadInputError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``audit verify`` and ``audit report`` to the ``anonfed`` parser."""
    p = sub.add_parser(
        "audit",
        help="verify a privacy ledger or render its HTML report (auditors; needs only the ledger and public keys)",
        description="Auditor tools: check a privacy ledger with no trust in the coordinator, or render a report.",
    )
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    v = asub.add_parser(
        "verify",
        help="check chain, signatures, epsilon recomputation, k-anonymity and artifacts",
        description=(
            "Verify a ledger: the hash chain, the site signature and the coordinator countersignature on every "
            "entry, each site's claim sequence, monotonic cumulative epsilon recomputed from the recorded "
            "mechanisms with Google's dp-accounting (a different implementation than the sites' Opacus), "
            "k >= the recorded minimum, the signed head (truncation), and optionally artifact hashes against a "
            "synthetic-output store. Prints OK:/FAIL:/WARN: lines; exits non-zero naming the first bad entry."
        ),
    )
    v.add_argument("ledger", type=Path, help="the ledger file (ledger.jsonl)")
    v.add_argument("--keys", type=Path, required=True, help="folder with coordinator.pub and <site>.pub files")
    v.add_argument("--store", type=Path, help="synthetic-output store: files named by their sha256")
    v.add_argument("--head", type=Path, help="signed head file (default: LEDGER.head)")
    v.add_argument("--workers", type=int, default=1, help="processes for signature checks (0 = one per CPU)")
    v.set_defaults(handler=_verify)

    r = asub.add_parser(
        "report",
        help="write a self-contained HTML report (epsilon per site, releases, verdict)",
        description=(
            "Render the ledger as one HTML file with embedded plots: per-site cumulative epsilon with budget "
            "lines, a releases table and the verification verdict (verified only if --keys is given)."
        ),
    )
    r.add_argument("ledger", type=Path, help="the ledger file (ledger.jsonl)")
    r.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write")
    r.add_argument("--keys", type=Path, help="public key folder; without it the report says NOT VERIFIED")
    r.add_argument("--store", type=Path, help="synthetic-output store to check artifact hashes against")
    r.add_argument("--budget", type=float, help="epsilon budget line drawn for every site")
    r.add_argument("--site-budget", action="append", default=[], metavar="SITE=EPS",
                   help="budget line for one site (repeatable)")
    r.set_defaults(handler=_report)


def _verify(args: argparse.Namespace) -> int:
    from coordinator.audit.verify import audit
    from protocols.signing import load_key_directory

    result = audit(args.ledger, load_key_directory(args.keys), head_path=args.head, store=args.store, workers=args.workers)
    for line in result.summary_lines():
        print(line)
    first = result.first_error
    return 0 if first is None else first.error.exit_code


def _parse_budgets(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        site, sep, value = item.partition("=")
        try:
            out[site] = float(value)
        except ValueError:
            sep = ""
        if not sep or not site:
            raise BadInputError(f"--site-budget: expected SITE=EPS (e.g. hospital-a=8), got {item!r}")
    return out


def _report(args: argparse.Namespace) -> int:
    from coordinator.audit.report import render_report, write_report
    from coordinator.audit.verify import audit, ledger_rows
    from protocols.signing import load_key_directory

    budgets = _parse_budgets(args.site_budget)
    result = None
    if args.keys is not None:
        result = audit(args.ledger, load_key_directory(args.keys), store=args.store)
        rows = list(result.rows)
    else:
        rows = ledger_rows(args.ledger)
    write_report(args.output, render_report(result, rows, budgets=budgets, default_budget=args.budget))
    verdict = "NOT VERIFIED (no --keys)" if result is None else ("VERIFIED" if result.ok else "FAILED")
    print(f"wrote {args.output}: {len(rows)} entries, {verdict}")
    return 0 if result is None or result.ok else result.first_error.error.exit_code
