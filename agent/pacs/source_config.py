"""Validation of ``sources:`` items with ``kind: dicomweb`` or ``kind: dimse``.

Every message names the key (``sources[1].url: ...``). Example::

    sources:
      - kind: dicomweb
        name: research-pacs                    # staging folder <state_dir>/pacs/research-pacs
        url: https://pacs.example.org/dicom-web
        username: anonfed
        password_env: ANONFED_PACS_PASSWORD    # preferred over `password:` in the file
        filters: {modalities: [MR], series_description: "*TOF*", date_from: 2020-01-01}
        max_concurrency: 4
        destination: self                      # push synthetic outputs back here (optional)
      - kind: dimse
        name: clinical
        host: 10.0.0.5
        port: 104
        called_ae: PACS
        calling_ae: ANONFED
        retrieve: c-move                       # or c-get (default)
        move_port: 11113
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from agent.config import PacsEndpoint, PacsFilters, PacsKind, PacsSource, RetrieveMethod
from protocols.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_AE = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")  # printable, no backslash
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
MAX_CONCURRENCY_LIMIT = 32

_ENDPOINT_KEYS = {
    "kind",
    "url",
    "host",
    "port",
    "called_ae",
    "calling_ae",
    "username",
    "password",
    "password_env",
    "timeout_s",
    "ca_file",
}
_SOURCE_KEYS = _ENDPOINT_KEYS | {"name", "filters", "retrieve", "move_port", "max_concurrency", "destination"}


def parse_pacs_source(
    m: Mapping[str, Any], *, where: str, index: int, state_root: Path, base_dir: Path | None = None
) -> PacsSource:
    """Validate one PACS source mapping.

    Raises
    ------
    ConfigError
        If a key is unknown, missing or invalid; the message names it.
    """
    _reject_unknown(m, _SOURCE_KEYS, where)
    endpoint = parse_endpoint(m, where=where, base_dir=base_dir)
    name = m.get("name", f"{endpoint.kind.value}-{index}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}.name: expected 1-63 lowercase letters, digits, '-' or '_', got {name!r}")
    retrieve_raw = m.get("retrieve", RetrieveMethod.C_GET.value)
    try:
        retrieve = RetrieveMethod(retrieve_raw)
    except ValueError as exc:
        raise ConfigError(f"{where}.retrieve: expected c-get or c-move, got {retrieve_raw!r}") from exc
    if "retrieve" in m and endpoint.kind is not PacsKind.DIMSE:
        raise ConfigError(f"{where}.retrieve: only applies to kind: dimse")
    move_port = None
    if retrieve is RetrieveMethod.C_MOVE:
        move_port = _port(m.get("move_port"), f"{where}.move_port")
    elif m.get("move_port") is not None:
        raise ConfigError(f"{where}.move_port: only used with retrieve: c-move")
    concurrency = m.get("max_concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY_LIMIT:
        raise ConfigError(f"{where}.max_concurrency: expected an integer 1..{MAX_CONCURRENCY_LIMIT}, got {concurrency!r}")
    filters = _parse_filters(m.get("filters") or {}, f"{where}.filters")
    destination = _parse_destination(m.get("destination"), endpoint, f"{where}.destination", base_dir)
    staging = (state_root / "pacs" / name).resolve()
    return PacsSource(name, endpoint, staging, filters, retrieve, move_port, concurrency, destination)


def parse_endpoint(m: Mapping[str, Any], *, where: str, base_dir: Path | None = None) -> PacsEndpoint:
    """Validate the connection keys shared by sources and push destinations.

    Raises
    ------
    ConfigError
        If the kind is unknown or a connection key is missing or invalid.
    """
    kind_raw = m.get("kind")
    try:
        kind = PacsKind(kind_raw)
    except ValueError as exc:
        raise ConfigError(f"{where}.kind: expected folder, dicomweb or dimse, got {kind_raw!r}") from exc
    username = m.get("username")
    if username is not None and (not isinstance(username, str) or not username):
        raise ConfigError(f"{where}.username: expected a non-empty string")
    password = m.get("password")
    if password is not None and not isinstance(password, str):
        # Never echo the value: it is a secret even when malformed.
        raise ConfigError(f"{where}.password: expected a string (quote it in YAML)")
    password_env = m.get("password_env")
    if password_env is not None and (not isinstance(password_env, str) or not _ENV.match(password_env)):
        raise ConfigError(f"{where}.password_env: expected an environment variable name, got {password_env!r}")
    if password is not None and password_env is not None:
        raise ConfigError(f"{where}.password: give either password or password_env, not both")
    if (password is not None or password_env is not None) and username is None:
        raise ConfigError(f"{where}.username: required when a password is configured")
    timeout = m.get("timeout_s", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ConfigError(f"{where}.timeout_s: expected seconds in (0, 3600], got {timeout!r}")
    if kind is PacsKind.DICOMWEB:
        for key in ("host", "port", "called_ae"):
            if key in m:
                raise ConfigError(f"{where}.{key}: only applies to kind: dimse (DICOMweb uses url)")
        url = m.get("url")
        if not isinstance(url, str):
            raise ConfigError(f"{where}.url: required for kind: dicomweb (e.g. http://pacs:8042/dicom-web)")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{where}.url: expected an http:// or https:// URL, got {url!r}")
        if parsed.username or parsed.password:
            raise ConfigError(f"{where}.url: put credentials in username/password_env, not in the URL")
        ca_file = _ca_file(m.get("ca_file"), f"{where}.ca_file", base_dir, https=parsed.scheme == "https")
        return PacsEndpoint(
            kind,
            url=url.rstrip("/"),
            username=username,
            password=password,
            password_env=password_env,
            timeout_s=float(timeout),
            ca_file=ca_file,
        )
    if "ca_file" in m:
        raise ConfigError(f"{where}.ca_file: only applies to kind: dicomweb with an https url")
    if "url" in m:
        raise ConfigError(f"{where}.url: only applies to kind: dicomweb (DIMSE uses host and port)")
    host = m.get("host")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}.host: required for kind: dimse")
    port = _port(m.get("port"), f"{where}.port")
    called = _ae(m.get("called_ae"), f"{where}.called_ae")
    calling = _ae(m.get("calling_ae", "ANONFED"), f"{where}.calling_ae")
    return PacsEndpoint(
        kind,
        host=host,
        port=port,
        called_ae=called,
        calling_ae=calling,
        username=username,
        password=password,
        password_env=password_env,
        timeout_s=float(timeout),
    )


def _ca_file(value: Any, key: str, base_dir: Path | None, *, https: bool) -> Path | None:
    if value is None:
        return None
    if not https:
        raise ConfigError(f"{key}: only applies to an https:// url")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a path to a PEM file, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if not path.is_file():
        raise ConfigError(f"{key}: CA file {path} does not exist")
    return path.resolve()


def _parse_destination(value: Any, source: PacsEndpoint, where: str, base_dir: Path | None) -> PacsEndpoint | None:
    if value is None or value is False:
        return None
    if value == "self":
        return source
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected 'self' or a mapping with kind and url/host, got {type(value).__name__}")
    _reject_unknown(value, _ENDPOINT_KEYS, where)
    return parse_endpoint(value, where=where, base_dir=base_dir)


def _parse_filters(value: Any, where: str) -> PacsFilters:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    _reject_unknown(value, {"modalities", "series_description", "date_from", "date_to"}, where)
    mods_raw = value.get("modalities", [])
    if isinstance(mods_raw, str):
        mods_raw = [mods_raw]
    if not isinstance(mods_raw, list):
        raise ConfigError(f"{where}.modalities: expected a list such as [MR, OP], got {type(mods_raw).__name__}")
    mods = set()
    for i, mod in enumerate(mods_raw):
        if not isinstance(mod, str) or not _MODALITY.match(mod.upper()):
            raise ConfigError(f"{where}.modalities[{i}]: expected a DICOM modality code such as MR, got {mod!r}")
        mods.add(mod.upper())
    desc = value.get("series_description")
    if desc is not None and (not isinstance(desc, str) or not desc):
        raise ConfigError(f"{where}.series_description: expected a pattern string such as '*TOF*'")
    date_from = _date(value.get("date_from"), f"{where}.date_from")
    date_to = _date(value.get("date_to"), f"{where}.date_to")
    if date_from and date_to and date_from > date_to:
        raise ConfigError(f"{where}.date_to: {date_to} is before date_from {date_from}")
    return PacsFilters(frozenset(mods), desc, date_from, date_to)


def _date(value: Any, key: str) -> datetime.date | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ConfigError(f"{key}: expected a date YYYY-MM-DD, got {value!r}")


def _port(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{key}: expected a TCP port 1..65535, got {value!r}")
    return value


def _ae(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _AE.match(value) or value != value.rstrip():
        raise ConfigError(f"{key}: expected an AE title of 1-16 printable characters, got {value!r}")
    return value


def _reject_unknown(m: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(map(str, m)) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed here: {', '.join(sorted(allowed))})")
