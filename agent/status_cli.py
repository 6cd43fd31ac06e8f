"""``anonfed agent ...``: site operator commands that inspect the running agent (``status``).

Other areas may add ``anonfed agent <name>`` commands through :func:`agent_subcommands`, which
creates the ``agent`` group once and returns it to every caller.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def agent_subcommands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-parsers of ``anonfed agent``, created on first use."""
    parser = sub.choices.get("agent")
    if parser is None:
        parser = sub.add_parser(
            "agent",
            help="inspect this site's agent: status (catalog, budget, last round, PACS)",
            description="Commands for hospital IT to inspect the agent running at this site.",
        )
        parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public lookup
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="agent_command", metavar="AGENT_COMMAND")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``anonfed agent status``."""
    p = agent_subcommands(sub).add_parser(
        "status",
        help="catalog counts, privacy budget used and left, last round, PACS reachability",
        description=(
            "Show what the site holds (catalog counts), what it has spent (epsilon used and left per "
            "dataset, from the site's own durable accountant), the last federated round, and whether "
            "each configured PACS answers (authenticated DICOMweb request or C-ECHO). Read-only. "
            "With --check the exit code is 1 when something needs attention (usable as a health check)."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--no-pacs", action="store_true", help="do not contact the PACS (offline status)")
    p.add_argument("--check", action="store_true", help="exit 1 unless healthy (state writable, accountant readable, PACS reachable)")
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.status import gather_status

    cfg = load_site_config(args.config)
    status = gather_status(cfg, probe_pacs=not args.no_pacs)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(status.describe())
    return 1 if args.check and not status.healthy else 0
