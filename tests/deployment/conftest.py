"""One real loopback deployment shared by the end-to-end assertions (it is the slow part)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.config import load_site_config
from agent.flower_client.enroll import enroll
from agent.ingest.pipeline import run_ingest
from coordinator.deployment.loopback import LoopbackFederation
from coordinator.deployment.pki import make_coordinator_ledger_key, make_server_pki
from coordinator.demo import APP_DIR

ROUNDS = 2
SYNTH = 4
RUN_TIMEOUT_S = 480


@dataclasses.dataclass
class Deployment:
    root: Path
    configs: list[Path]
    output: Path
    keys: Path
    summary: dict
    intruder_log: str
    intruder_exit: int | None
    logs: Path
    plain_http_error: str | None
    https_status: int | None


@pytest.fixture(scope="module")
def deployment(phantom_consortium, tmp_path_factory) -> Deployment:
    root = tmp_path_factory.mktemp("deployment")
    consortium = root / "consortium"
    shutil.copytree(phantom_consortium.root, consortium)  # the session fixture is read-only
    configs = sorted((consortium / "configs").glob("*.yaml"))
    keys = root / "coordinator" / "keys"
    pki = make_server_pki(root / "coordinator")
    make_coordinator_ledger_key(keys)
    nodes = []
    for cfg_path in configs:
        cfg = load_site_config(cfg_path)
        run_ingest(cfg, progress=False)
        enrolled = enroll(cfg, export_dir=root / "enrolled")
        shutil.copyfile(root / "enrolled" / "ledger" / f"{cfg.site_id}.pub", keys / "public" / f"{cfg.site_id}.pub")
        nodes.append((cfg.site_id, enrolled, cfg_path))
    # An intruder: a valid site config and a fresh key that was never registered.
    intruder_site = load_site_config(configs[0])
    intruder_site = dataclasses.replace(intruder_site, state=type(intruder_site.state)(root / "intruder-state"))
    intruder = enroll(intruder_site)
    output = root / "coordinator" / "output"
    with LoopbackFederation(root / "federation", pki) as fed:
        port = fed.start_superlink()
        plain_http_error, https_status = _probe(port, pki.ca_cert)
        for site_id, enrolled, _ in nodes:
            fed.register_node(enrolled.node_public_key, name=site_id)
        for site_id, enrolled, cfg_path in nodes:
            fed.start_supernode(site_id, private_key=enrolled.node_private_key, site_config=cfg_path)
        intruder_child = fed.start_supernode("intruder", private_key=intruder.node_private_key, site_config=configs[0])
        run = fed.run_app(APP_DIR, {
            "num-rounds": ROUNDS, "local-steps": 1, "patch-size": 32, "patches-per-volume": 4,
            "expected-batch-patients": 2, "synth-count": SYNTH, "min-sites": len(nodes), "target-epsilon": 8.0,
            "output-dir": str(output), "keys-dir": str(keys),
        }, timeout_s=RUN_TIMEOUT_S)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
        intruder_exit = intruder_child.proc.poll()
        intruder_log = intruder_child.log_path.read_text(errors="replace")
    summary_path = output / "summary.json"
    if not summary_path.is_file():
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((root / "federation" / "logs").glob("*.log")))
        pytest.fail(f"the deployment did not finish (flwr run exit {run.proc.returncode}):\n{logs}")
    return Deployment(root, configs, output, keys, json.loads(summary_path.read_text()), intruder_log,
                      intruder_exit, root / "federation" / "logs", plain_http_error, https_status)


def _probe(port: int, ca_cert: Path) -> tuple[str | None, int | None]:
    """(error of a plain-HTTP request, status of an HTTPS request verified against our CA)."""
    plain_error = None
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
    except Exception as exc:  # noqa: BLE001 - any failure is what we expect from a TLS-only port
        plain_error = type(exc).__name__
    status = None
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5, context=ctx) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:  # TLS worked; the path may not exist
        status = exc.code
    return plain_error, status
