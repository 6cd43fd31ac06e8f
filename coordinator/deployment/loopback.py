"""A real Flower deployment on loopback: one SuperLink (TLS, node authentication, state database),
registered SuperNodes, and ``flwr run`` — all as child processes, stopped together.

Every child runs in its own process group so that stopping it also stops what it started (a
SuperNode's ClientApp processes, the SuperLink's ServerApp process). Only processes started here
are ever signalled. Ports are picked free on 127.0.0.1; the Control API listens on loopback only
(see deploy/flower/README.md: never expose it to sites).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Mapping, Sequence

from coordinator.deployment.pki import ServerPki
from protocols.errors import TransportError

log = logging.getLogger(__name__)

CONNECTION = "anonfed"
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """Path of a console script installed beside this Python (the venv), else from PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise TransportError(f"{name} is not installed; install anonfed with its dependencies (flwr)")
    return found


@dataclasses.dataclass
class Child:
    """A started process, its log file and its name."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]


class LoopbackFederation:
    """Start and stop a SuperLink and SuperNodes under ``workdir``; use as a context manager."""

    def __init__(self, workdir: Path, pki: ServerPki, *, extra_env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.pki = pki
        self.port: int | None = None
        self.children: list[Child] = []
        self.flwr_home = self.workdir / "flwr-home"
        # Flower starts further tools (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {**os.environ, **CHILD_ENV, "PATH": path, "FLWR_HOME": str(self.flwr_home), **(extra_env or {})}

    def __enter__(self) -> "LoopbackFederation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes ----------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: Sequence[str]) -> Child:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "ab")
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)
        child = Child(name, proc, log_path, fh)
        self.children.append(child)
        log.debug("started %s (pid %d)", name, proc.pid)
        return child

    def start_superlink(self, *, timeout_s: float = 60.0, simulation: bool = False) -> int:
        """Start the SuperLink with TLS, node authentication and a state database; return its port.

        With ``simulation`` it runs Flower's simulation runtime instead (virtual SuperNodes inside
        the SuperLink's simulation process, plain HTTP on loopback, no node authentication needed).
        """
        self.port = free_port()
        db = self.workdir / "superlink" / "state.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        if simulation:
            self._spawn("superlink", [
                tool("flower-superlink"), "--simulation", "--insecure", "--isolation", "subprocess",
                "--database", str(db), "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port),
            ])
            self._write_connection(insecure=True)
            self._wait_for_port(self.port, "superlink", timeout_s)
            return self.port
        self._spawn("superlink", [
            tool("flower-superlink"),
            "--ssl-ca-certfile", str(self.pki.ca_cert),
            "--ssl-certfile", str(self.pki.server_cert),
            "--ssl-keyfile", str(self.pki.server_key),
            "--enable-supernode-auth",
            "--database", str(db),
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ])
        self._write_connection()
        self._wait_for_port(self.port, "superlink", timeout_s)
        return self.port

    def _write_connection(self, *, insecure: bool = False) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = "insecure = true\n" if insecure else f'root-certificates = "{self.pki.ca_cert}"\n'
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}',
            encoding="utf-8",
        )

    def _wait_for_port(self, port: int, name: str, timeout_s: float) -> None:
        child = next(c for c in self.children if c.name == name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise TransportError(f"{name} exited with code {child.proc.returncode}; see {child.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.2)
        raise TransportError(f"{name} did not open port {port} within {timeout_s:g} s; see {child.log_path}")

    def register_node(self, public_key: Path, *, name: str) -> None:
        """``flwr supernode register`` (SuperNode authentication: only registered keys may connect)."""
        out = self.flwr(["supernode", "register", str(public_key), CONNECTION, "--name", name], timeout_s=60)
        if out.returncode != 0:
            raise TransportError(f"registering {name} failed: {out.stdout.strip()[-500:]}")

    def start_supernode(self, name: str, *, private_key: Path, site_config: Path) -> Child:
        """Start one SuperNode for a site; its ClientApp finds the site through ``site-config``."""
        if self.port is None:
            raise TransportError("start the SuperLink before the SuperNodes")
        return self._spawn(f"supernode-{name}", [
            tool("flower-supernode"),
            "--root-certificates", str(self.pki.ca_cert),
            "--superlink", f"127.0.0.1:{self.port}",
            "--auth-supernode-private-key", str(private_key),
            "--port", str(free_port()),
            "--node-config", f'site-config="{Path(site_config).resolve()}"',
        ])

    def flwr(self, args: Sequence[str], *, timeout_s: float) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this SuperLink."""
        return subprocess.run([tool("flwr"), *args], env=self.env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=timeout_s)

    def run_app(
        self,
        app_dir: Path,
        run_config: Mapping[str, object],
        *,
        timeout_s: float,
        federation_config: Mapping[str, object] | None = None,
    ) -> Child:
        """``flwr run APP anonfed --stream`` with ``run_config`` overrides; returns the running child.

        ``federation_config`` (simulation only) sets e.g. ``num-supernodes``.
        """
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        argv = [tool("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", overrides]
        if federation_config:
            argv += ["--federation-config", " ".join(f"{k}={_toml(v)}" for k, v in federation_config.items())]
        return self._spawn("flwr-run", argv)

    def alive(self, name: str) -> bool:
        return any(c.name == name and c.proc.poll() is None for c in self.children)

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop every child (SIGTERM to its process group, SIGKILL after ``grace_s``), newest first.

        Flower starts some helpers in sessions of their own (the SuperLink's SuperExec and ServerApp
        process); they are found as descendants of our children and stopped too.
        """
        helpers = [pid for child in self.children if child.proc.poll() is None for pid in _descendants(child.proc.pid)]
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(timeout=5)
            # the group may still hold grandchildren after the leader exited
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.log_file.close()
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.children.clear()


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for kid in children.get(stack.pop(), []):
            out.append(kid)
            stack.append(kid)
    return out


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
