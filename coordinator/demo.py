"""``anonfed demo``: the whole system on loopback, every part as its own process.

Steps (each a child process, as a real consortium would run them on separate machines):

1. ``anonfed phantoms`` writes the phantom consortium; ``anonfed ingest`` builds each site's catalog;
   ``anonfed enroll`` creates each site's keys and exports the public halves;
2. ``anonfed coordinator pki`` creates the CA, the SuperLink certificate and the ledger key;
3. ``flower-superlink`` (TLS, SuperNode authentication, state database) on a free loopback port;
   ``flwr supernode register`` per site; one ``flower-supernode`` per site with its site config;
4. ``flwr run`` of the app bundle in ``deploy/flower/app``: DP-GAN rounds, a ``synthesize`` query
   and a k-anonymous fundus release per site (progress is shown from the coordinator's progress
   log as it happens);
5. ``anonfed audit verify`` on the ledger, ``anonfed coordinator export`` of the synthetic store,
   and a summary.

This module never imports agent code: the coordinator side of a consortium does not have it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from coordinator.deployment.loopback import CHILD_ENV, LoopbackFederation, tool
from coordinator.deployment.pki import ServerPki
from protocols.errors import TransportError

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[1] / "deploy" / "flower" / "app"


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What the demo runs; the defaults fit well under 15 minutes on 2 CPU cores."""

    out: Path
    sites: int = 3
    rounds: int = 3
    local_steps: int = 2
    patch_size: int = 32
    target_epsilon: float = 8.0
    synth_count: int = 16
    timeout_s: float = 1800.0
    tof_patients: int = 6
    volume_size: int = 64
    ksalsa_k: int = 5  # k-anonymous fundus release per site after training (0: none)
    ksalsa_method: str = "k-same-pixel"  # needs no site models; `ksalsa` needs a trained StyleGAN + encoder
    task: str = "dpgan"  # or "stylegan-dp": fundus StyleGAN2 (tiny16, 16 px) with a DP discriminator

    def task_config(self) -> dict[str, object]:
        """The Flower run-config keys that choose what the sites train."""
        if self.task == "stylegan-dp":
            return {"task": "stylegan-dp", "architecture": "tiny16", "patch-size": 16, "patches-per-volume": 2,
                    "dataset-id": "fundus", "synth-count": 0}
        return {"task": "dpgan", "patch-size": self.patch_size, "synth-count": self.synth_count}


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def phantoms(self) -> Path:
        return self.root / "phantoms"

    @property
    def enrolled(self) -> Path:
        return self.root / "enrolled"

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    @property
    def keys(self) -> Path:
        return self.coordinator / "keys"

    @property
    def output(self) -> Path:
        return self.coordinator / "output"

    @property
    def federation(self) -> Path:
        return self.root / "federation"

    def site_configs(self) -> list[Path]:
        return sorted((self.phantoms / "configs").glob("*.yaml"))


def run_demo(opts: DemoOptions) -> int:
    """Run the demo; returns the process exit code (0 when the ledger and the store verify).

    Raises
    ------
    TransportError
        If a step fails (the message names the step and its log file).
    """
    paths = DemoPaths(Path(opts.out).resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    # A demo starts from fresh sites and a fresh coordinator; only the generated phantom images are
    # reused (same spec, same pixels). Site state (catalog, accountant, keys, claims) is rebuilt.
    for stale in (paths.phantoms / "state", paths.coordinator, paths.enrolled, paths.federation,
                  paths.root / "synthetic-dataset", paths.root / "logs"):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.monotonic()
    _sigterm_as_interrupt()
    step = _Stepper(started)

    step("generating the phantom consortium")
    _anonfed(["phantoms", "--out", str(paths.phantoms), "--sites", str(opts.sites),
              "--tof-patients", str(opts.tof_patients), "--volume-size", str(opts.volume_size)], paths, "phantoms")
    configs = paths.site_configs()
    if len(configs) < opts.sites:
        raise TransportError(f"expected {opts.sites} site configs in {paths.phantoms / 'configs'}, found {len(configs)}")
    for cfg in configs:
        step(f"site {cfg.stem}: ingest and enroll (keys stay at the site; public keys are exported)")
        _anonfed(["ingest", "--config", str(cfg)], paths, f"ingest-{cfg.stem}")
        _anonfed(["enroll", "--config", str(cfg), "--export", str(paths.enrolled)], paths, f"enroll-{cfg.stem}")

    step("coordinator: CA, SuperLink certificate, ledger key")
    _anonfed(["coordinator", "pki", "--out", str(paths.coordinator)], paths, "pki")
    (paths.keys / "public").mkdir(parents=True, exist_ok=True)
    for pub in sorted((paths.enrolled / "ledger").glob("*.pub")):
        shutil.copyfile(pub, paths.keys / "public" / pub.name)  # what a site hands over at enrollment
    pki = ServerPki(paths.coordinator / "ca.crt", paths.coordinator / "server.pem", paths.coordinator / "server.key")

    summary: dict = {}
    with LoopbackFederation(paths.federation, pki) as fed:
        port = fed.start_superlink()
        step(f"SuperLink on 127.0.0.1:{port} (TLS, SuperNode authentication, state database)")
        for cfg in configs:
            fed.register_node(paths.enrolled / "flower" / f"{cfg.stem}.pub", name=cfg.stem)
        step(f"registered {len(configs)} SuperNode public keys")
        for cfg in configs:
            site_key = _site_node_key(cfg)
            fed.start_supernode(cfg.stem, private_key=site_key, site_config=cfg)
        step(f"started {len(configs)} SuperNodes; running {opts.rounds} {opts.task} round(s)")
        run = fed.run_app(APP_DIR, {
            "num-rounds": opts.rounds, "local-steps": opts.local_steps, **opts.task_config(),
            "target-epsilon": opts.target_epsilon, "min-sites": len(configs),
            "ksalsa-k": opts.ksalsa_k, "ksalsa-method": opts.ksalsa_method,
            "output-dir": str(paths.output), "keys-dir": str(paths.keys),
        }, timeout_s=opts.timeout_s)
        _follow(run.proc, paths.output / "progress.log", deadline=started + opts.timeout_s)
        if run.proc.returncode != 0 or not (paths.output / "summary.json").is_file():
            raise TransportError(f"the federated run failed (exit {run.proc.returncode}); see {run.log_path} and "
                                 f"{paths.federation / 'logs'}")
        summary = json.loads((paths.output / "summary.json").read_text(encoding="utf-8"))
    step("all Flower processes stopped")

    ledger = paths.output / "ledger" / "ledger.jsonl"
    verified = None
    if ledger.is_file():
        step("auditor: verifying the privacy ledger with only the ledger and public keys")
        verified = _anonfed(["audit", "verify", str(ledger), "--keys", str(paths.keys / "public"),
                             "--store", str(paths.output / "store")], paths, "audit-verify", check=False, show=True)
        step("auditor: rendering the ledger report (HTML)")
        budgets = [f"--site-budget={site}={b['limit']}" for site, b in sorted((summary.get("budget") or {}).items())]
        _anonfed(["audit", "report", str(ledger), "-o", str(paths.root / "report.html"), "--keys",
                  str(paths.keys / "public"), "--store", str(paths.output / "store"), *budgets], paths, "audit-report")
    step("exporting the synthetic dataset")
    _anonfed(["coordinator", "export", "--store", str(paths.output / "store"), "--dest",
              str(paths.root / "synthetic-dataset")], paths, "export")
    _print_summary(summary, paths, verified, time.monotonic() - started)
    return 0 if verified in (None, 0) else 1


class _Stepper:
    def __init__(self, started: float) -> None:
        self.started = started

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f} s] {text}", flush=True)


def _anonfed(args: Sequence[str], paths: DemoPaths, name: str, *, check: bool = True, show: bool = False) -> int:
    log_path = paths.root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **CHILD_ENV}
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.run([tool("anonfed"), *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    if show:
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith(("OK", "FAIL", "WARN")) or "verified" in line.lower():
                print(f"         {line}", flush=True)
    if check and proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8").strip().splitlines()[-3:]
        raise TransportError(f"`anonfed {' '.join(args[:1])}` failed (exit {proc.returncode}): {' | '.join(tail)}; "
                             f"full log {log_path}")
    return proc.returncode


def _site_node_key(cfg: Path) -> Path:
    # The site's own key, created by `anonfed enroll` in its state folder (read from the site config,
    # as the SuperNode operator at the site would).
    import yaml

    raw = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    state = Path(raw["state_dir"])
    state = state if state.is_absolute() else (cfg.parent / state).resolve()
    return state / "keys" / "flower-node.key"


def _follow(proc: subprocess.Popen, progress: Path, *, deadline: float) -> None:
    """Print the coordinator's progress lines while ``proc`` runs."""
    seen = 0
    try:
        while True:
            done = proc.poll() is not None
            if progress.is_file():
                lines = progress.read_text(encoding="utf-8").splitlines()
                for line in lines[seen:]:
                    print(f"         {line}", flush=True)
                seen = len(lines)
            if done:
                return
            if time.monotonic() > deadline:
                raise TransportError("the demo took longer than its timeout; stopping every process")
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
        raise


def _print_summary(summary: dict, paths: DemoPaths, verified: int | None, elapsed: float) -> None:
    print("\n== anonfed demo summary ==")
    print(f"run {summary.get('run_id')}: {summary.get('rounds_completed')} round(s) completed "
          f"({summary.get('stop_reason')}) in {elapsed:.0f} s")
    print("per-site epsilon (each site's own accountant, as reported; never averaged):")
    for site, b in sorted((summary.get("budget") or {}).items()):
        print(f"  {site:<14} epsilon {float(b['spent']):.4g} of limit {float(b['limit']):.4g}, "
              f"{b['rounds_trained']} round(s) trained{' (stopped: ' + b['stop_reason'] + ')' if b.get('exhausted') else ''}")
    print(f"consortium epsilon (max over sites, disjoint data): {summary.get('consortium_epsilon_max_over_sites', 0):.4g}")
    outputs = summary.get("outputs") or []
    pairs = [o for o in outputs if "cluster_sizes" not in o]
    kanon = [o for o in outputs if "cluster_sizes" in o]
    print(f"synthetic outputs: {sum(int(o['count']) for o in pairs)} DP image+label pairs from {len(pairs)} site(s); "
          f"{sum(int(o['count']) for o in kanon)} k-anonymous fundus averages from {len(kanon)} site(s)")
    for r in summary.get("refusals") or []:
        print(f"  refusal: round {r['round']} {r['site']}: {r['code']}")
    if verified is None:
        print("ledger: none (no ledger code or keys)")
    else:
        print(f"ledger: {paths.output / 'ledger' / 'ledger.jsonl'} -> {'VERIFIED' if verified == 0 else 'FAILED'}")
        print(f"audit report: {paths.root / 'report.html'} (open in a browser)")
    print(f"synthetic store: {paths.output / 'store'}")
    print(f"synthetic dataset: {paths.root / 'synthetic-dataset'} (manifest.csv, PNG and NPZ per output)")
    print(f"coordinator summary: {paths.output / 'summary.json'}; logs: {paths.root / 'logs'}, "
          f"{paths.federation / 'logs'}")


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, handler)


__all__ = ["DemoOptions", "run_demo"]
