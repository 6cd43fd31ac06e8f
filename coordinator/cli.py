"""Coordinator and auditor subcommands of ``anonfed``.

Each feature area (ledger and audit, federation, store) keeps its parser in its own module with a
``register(sub)`` function; handlers import their implementation lazily.
"""

from __future__ import annotations

import argparse
import importlib

# Add one line per area rather than growing this file.
_SUBCOMMAND_MODULES: tuple[str, ...] = ("coordinator.audit.cli", "coordinator.deployment.cli", "coordinator.rounds.cli")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the coordinator's and auditors' subcommands to the ``anonfed`` parser."""
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
