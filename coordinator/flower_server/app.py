"""The ServerApp: read the run config, wrap the Grid, run a session. Nothing else lives here."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.flower_server.transport import GridTransport
from coordinator.rounds.plan import FederationPlan
from coordinator.rounds.session import SessionPaths, run_session
from protocols.errors import ConfigError

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    if "output-dir" not in cfg:
        raise ConfigError("run config needs output-dir (where the store, ledger and summary go)")
    plan = FederationPlan.from_run_config(cfg)
    keys = str(cfg.get("keys-dir") or "")
    paths = SessionPaths(Path(str(cfg["output-dir"])), Path(str(keys)) if keys else None)
    transport = GridTransport(grid)
    transport.wait_for_nodes(plan.min_sites, timeout_s=plan.wait_for_sites_s)
    run_session(transport, plan, paths)
