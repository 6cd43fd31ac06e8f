"""``anonfed simulate --sites N``: the same ServerApp and ClientApp on Flower's simulation engine.

Each virtual SuperNode ``i`` serves the site whose config is the ``i``-th in sorted order of the
``simulation-configs`` folder (see ``agent.flower_client.app.site_config_for``). Data preparation
(phantoms, ingest) runs as ``anonfed`` child processes, like in the demo; the SuperLink runs in
simulation mode as a child process on a free loopback port and is stopped at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coordinator.demo import APP_DIR
from coordinator.deployment.loopback import CHILD_ENV, LoopbackFederation, tool
from coordinator.deployment.pki import ServerPki
from protocols.errors import TransportError


@dataclasses.dataclass(frozen=True)
class SimulationOptions:
    sites: int
    out: Path
    rounds: int = 2
    local_steps: int = 1
    synth_count: int = 4
    cpus_per_site: int = 1
    timeout_s: float = 7200.0


def run_simulation_cli(opts: SimulationOptions) -> int:
    """Prepare ``opts.sites`` small phantom sites and run the apps on the simulation engine."""
    out = Path(opts.out).resolve()
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    phantoms = out / "phantoms"
    say(f"generating {opts.sites} small phantom sites")
    _run(["phantoms", "--out", str(phantoms), "--sites", str(opts.sites), "--tof-patients", "3",
          "--volume-size", "32", "--fundus-patients", "1", "--fundus-size", "64"], out / "logs" / "phantoms.log")
    configs = sorted((phantoms / "configs").glob("*.yaml"))
    say(f"ingesting {len(configs)} sites")
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda c: _run(["ingest", "--config", str(c)], out / "logs" / f"ingest-{c.stem}.log"), configs))
    output = out / "coordinator-output"
    unused = ServerPki(out / "none", out / "none", out / "none")  # the simulation runtime uses no TLS
    with LoopbackFederation(out / "simulation", unused) as fed:
        port = fed.start_superlink(simulation=True)
        say(f"simulation SuperLink on 127.0.0.1:{port}; {len(configs)} virtual SuperNodes")
        run = fed.run_app(APP_DIR, {
            "num-rounds": opts.rounds, "local-steps": opts.local_steps, "patch-size": 32,
            "patches-per-volume": 4, "expected-batch-patients": 2, "synth-count": opts.synth_count,
            "min-sites": len(configs), "output-dir": str(output), "simulation-configs": str(phantoms / "configs"),
        }, timeout_s=opts.timeout_s, federation_config={
            "num-supernodes": len(configs), "client-resources-num-cpus": int(opts.cpus_per_site),
        })
        seen = 0
        deadline = started + opts.timeout_s
        while run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
            seen = _show(output / "progress.log", seen)
        _show(output / "progress.log", seen)
        if run.proc.returncode != 0 or not (output / "summary.json").is_file():
            raise TransportError(f"the simulation failed (exit {run.proc.returncode}); see {run.log_path}")
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    say(f"done: {summary['rounds_completed']} round(s), {len(summary['outputs'])} site output(s); "
        f"summary {output / 'summary.json'}")
    return 0


def _run(args: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.run([tool("anonfed"), *args], stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, **CHILD_ENV})
    if proc.returncode != 0:
        raise TransportError(f"`anonfed {args[0]}` failed (exit {proc.returncode}); see {log_path}")


def _show(progress: Path, seen: int) -> int:
    if not progress.is_file():
        return seen
    lines = progress.read_text(encoding="utf-8").splitlines()
    for line in lines[seen:]:
        print(f"         {line}", flush=True)
    return len(lines)
