"""``anonfed agent status``: what a site holds, what it has spent, and whether its PACS answers.

Read-only: nothing is created or changed (no catalog, keys or accountant file is made by asking).
Every figure is a count or a privacy figure; no identifier or path of a patient is shown.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from agent.config import PacsSource, SiteConfig
from protocols.errors import AnonfedError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BudgetStatus:
    """Privacy spent on one dataset, from the site's own durable accountant."""

    dataset_id: str
    epsilon: float
    max_epsilon: float
    delta: float
    steps: int
    accountant: str
    error: str | None = None

    @property
    def left(self) -> float:
        return max(self.max_epsilon - self.epsilon, 0.0) if math.isfinite(self.epsilon) else 0.0


@dataclasses.dataclass(frozen=True)
class PacsStatus:
    """One configured PACS: reachable or not, and what the last sync did."""

    name: str
    where: str
    reachable: bool | None  # None: not probed
    detail: str
    staged: int
    last_sync: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class AgentStatus:
    """Everything ``anonfed agent status`` shows."""

    site_id: str
    state_writable: bool
    catalog: dict[str, Any] | None
    budgets: tuple[BudgetStatus, ...]
    max_epsilon: float
    last_rounds: dict[str, dict[str, Any]]  # task -> the last round this site trained for it
    pacs: tuple[PacsStatus, ...]

    @property
    def healthy(self) -> bool:
        """State folder writable, accountant files readable, every probed PACS reachable."""
        return (
            self.state_writable
            and all(b.error is None for b in self.budgets)
            and all(p.reachable is not False for p in self.pacs)
        )

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["healthy"] = self.healthy
        for b, d in zip(self.budgets, doc["budgets"]):
            d["left"] = b.left
        return doc

    def describe(self) -> str:
        lines = [f"site: {self.site_id}  ({'healthy' if self.healthy else 'NOT healthy'})"]
        if not self.state_writable:
            lines.append("  state_dir is not writable: the agent cannot record spending or sync")
        if self.catalog is None:
            lines.append("catalog: none yet (run `anonfed ingest`)")
        else:
            c = self.catalog
            lines.append(f"catalog: {c['patients']} patient(s), last ingest {c.get('last_ingest') or 'never'}")
            for group in ("files", "series", "quarantine"):
                items = ", ".join(f"{k} {v}" for k, v in sorted(c[group].items())) or "none"
                lines.append(f"  {group}: {items}")
        if not self.budgets:
            lines.append(f"privacy budget: nothing spent; {self.max_epsilon:g} epsilon available per dataset")
        for b in self.budgets:
            if b.error:
                lines.append(f"privacy budget [{b.dataset_id}]: UNREADABLE: {b.error}")
                continue
            eps = f"{b.epsilon:.3f}" if math.isfinite(b.epsilon) else "infinite (a non-DP model was released)"
            lines.append(
                f"privacy budget [{b.dataset_id}]: epsilon used {eps} of {b.max_epsilon:g}, left {b.left:.3f} "
                f"(delta {b.delta:g}, {b.steps} DP-SGD steps, {b.accountant} accountant)"
            )
        if not self.last_rounds:
            lines.append("last round: none")
        for task, r in sorted(self.last_rounds.items()):
            lines.append(
                f"last {task} round: {r.get('round')} of run {r.get('run_id')} ({r.get('architecture', '?')}, "
                f"dataset {r.get('dataset_id', '?')}, cumulative epsilon {r.get('epsilon_cumulative', '?')})"
            )
        for p in self.pacs:
            state = {True: "reachable", False: "UNREACHABLE", None: "not probed"}[p.reachable]
            lines.append(f"pacs {p.name} ({p.where}): {state}{': ' + p.detail if p.detail else ''}; {p.staged} instance(s) staged")
            if p.last_sync:
                s = p.last_sync
                lines.append(f"  last sync {s['started_at']}: {s['status']}, {s['retrieved']} retrieved of {s['found']} found")
        return "\n".join(lines)


def gather_status(cfg: SiteConfig, *, probe_pacs: bool = True) -> AgentStatus:
    """Collect the site's status without changing anything on disk."""
    pacs = tuple(_pacs_status(cfg, s, probe=probe_pacs) for s in cfg.sources if isinstance(s, PacsSource))
    return AgentStatus(
        site_id=cfg.site_id,
        state_writable=_writable(cfg.state.root),
        catalog=_catalog_counts(cfg),
        budgets=tuple(_budgets(cfg)),
        max_epsilon=cfg.privacy.max_epsilon,
        last_rounds=_last_rounds(cfg),
        pacs=pacs,
    )


def _writable(root: Path) -> bool:
    # The folder may not exist before the first run: then its nearest existing parent must be writable.
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


def _catalog_counts(cfg: SiteConfig) -> dict[str, Any] | None:
    path = cfg.state.catalog
    if not path.is_file():
        return None
    # Opened read-only through SQLite, not through Catalog.open, which would create site keys.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        q = conn.execute

        def grouped(sql: str) -> dict[str, int]:
            try:
                return {str(k): int(v) for k, v in q(sql).fetchall()}
            except sqlite3.Error:
                return {}

        counts: dict[str, Any] = {
            "files": grouped("SELECT kind, COUNT(*) FROM files WHERE status='ok' GROUP BY kind"),
            "series": grouped("SELECT kind, COUNT(*) FROM series WHERE status='ok' GROUP BY kind"),
            "quarantine": grouped("SELECT reason_code, COUNT(*) FROM quarantine GROUP BY reason_code"),
        }
        try:
            counts["patients"] = int(q("SELECT COUNT(*) FROM patients").fetchone()[0])
        except sqlite3.Error:
            counts["patients"] = 0
        counts["last_ingest"] = _last_ingest(conn)
        return counts
    finally:
        conn.close()


def _last_ingest(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT finished, started FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    when = row[0] if row[0] is not None else row[1]
    if isinstance(when, (int, float)):
        stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="seconds")
        return stamp if row[0] is not None else stamp + " (unfinished)"
    return str(when)


def _budgets(cfg: SiteConfig) -> list[BudgetStatus]:
    folder = cfg.state.accountant
    if not folder.is_dir():
        return []
    results = []
    for path in sorted(folder.glob("*.json")):
        results.append(_budget_of(path, cfg))
    return results


def _budget_of(path: Path, cfg: SiteConfig) -> BudgetStatus:
    dataset_id = path.stem
    max_eps, delta = cfg.privacy.max_epsilon, cfg.privacy.delta
    try:
        from agent.dp.accounting import AccountantKind
        from agent.dp.durable_accountant import DurableAccountant

        kind = json.loads(path.read_text(encoding="utf-8")).get("accountant")
        accountant = DurableAccountant(path, kind=AccountantKind(kind), delta=delta)
        return BudgetStatus(dataset_id, accountant.epsilon(), max_eps, delta, accountant.total_steps, str(kind))
    except (AnonfedError, ValueError, OSError, ImportError) as exc:
        # Shown, never hidden: an unreadable accountant is the one thing an operator must see.
        return BudgetStatus(dataset_id, math.inf, max_eps, delta, 0, "?", error=str(exc))


def _last_rounds(cfg: SiteConfig) -> dict[str, dict[str, Any]]:
    from agent.site_service.state import SiteState
    from protocols.messages import FEDERATED_TRAINING_TASKS

    out: dict[str, dict[str, Any]] = {}
    for task in FEDERATED_TRAINING_TASKS:
        path = cfg.state.root / "federation" / f"{SiteState.model_slot(task)}.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            out[task.value] = {"round": "?", "run_id": f"unreadable {path.name}"}
            continue
        keys = ("run_id", "round", "dataset_id", "architecture", "epsilon_cumulative", "num_patients")
        out[task.value] = {k: doc.get(k) for k in keys}
    return out


def _pacs_status(cfg: SiteConfig, source: PacsSource, *, probe: bool) -> PacsStatus:
    from agent.pacs.sync import state_file

    staged, last = 0, None
    sf = state_file(cfg, source)
    if sf.is_file():
        conn = sqlite3.connect(f"file:{sf}?mode=ro", uri=True)
        try:
            staged = int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
            row = conn.execute("SELECT started_at, ended_at, status, found, retrieved FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None:
                last = dict(zip(("started_at", "ended_at", "status", "found", "retrieved"), row))
        except sqlite3.Error as exc:
            log.warning("sync state of %s is unreadable: %s", source.name, exc)
        finally:
            conn.close()
    reachable: bool | None = None
    detail = ""
    if probe:
        reachable, detail = probe_endpoint(source)
    return PacsStatus(source.name, source.endpoint.describe(), reachable, detail, staged, last)


def probe_endpoint(source: PacsSource) -> tuple[bool, str]:
    """(reachable, why not) for a PACS: an authenticated DICOMweb request or a C-ECHO."""
    from agent.pacs.sync import make_client

    client = None
    try:
        client = make_client(source.endpoint, source=source)
        client.ping()
        return True, ""
    except AnonfedError as exc:
        return False, str(exc)
    finally:
        if client is not None and hasattr(client, "close"):
            client.close()
