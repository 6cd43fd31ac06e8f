"""The ``anonfed`` command: one CLI, subcommands contributed by each side.

The agent and the coordinator each register their subcommands through the ``anonfed.cli`` entry
point group, so this frame never imports site code (an auditor's ``anonfed audit verify`` does not
load torch or pydicom). Every :class:`~protocols.errors.AnonfedError` becomes a one-line message
and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Callable, Sequence

from protocols.errors import AnonfedError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every registered side's subcommands."""
    parser = argparse.ArgumentParser(
        prog="anonfed",
        description=(
            "Federated on-site anonymization of medical images. Hospitals run the agent "
            "commands (ingest, train, ledger show); consortium coordinators run rounds; auditors "
            "verify the privacy ledger. Real pixels never leave a site."
        ),
        epilog="Run `anonfed COMMAND --help` for the options of one command.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="anonfed.cli"), key=lambda e: e.name):
        register = ep.load()
        register(sub)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    """Configure the root logger once, for the CLI process only (libraries never do this)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose < 2:
        for noisy in ("flwr", "PIL", "matplotlib", "h5py", "pydicom", "highdicom", "pynetdicom"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # dp-accounting warns for every RDP order it drops as non-convergent; the bound stays valid.
        logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anonfed`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except AnonfedError as exc:
        print(f"anonfed: error: {exc}", file=sys.stderr)
        print(f"anonfed: {type(exc).help_text}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("anonfed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
