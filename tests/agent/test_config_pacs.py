"""PACS sources in the site config: parsed into PacsSource, every bad value named by its key."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from agent.config import FolderSource, PacsKind, PacsSource, RetrieveMethod, parse_site_config
from protocols.errors import ConfigError


def _raw(tmp_path: Path, *sources: dict) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "site_id": "hospital-a",
        "sources": [{"path": "data"}, *sources],
        "state_dir": "state",
        "privacy": {"max_epsilon": 8, "delta": 1e-5},
    }


WEB = {"kind": "dicomweb", "name": "research", "url": "http://127.0.0.1:8042/dicom-web/", "username": "u", "password_env": "PACS_PW"}
DIMSE = {"kind": "dimse", "name": "clinical", "host": "127.0.0.1", "port": 4242, "called_ae": "ORTHANC"}


def test_dicomweb_source_parsed_with_staging_folder_and_filters(tmp_path: Path) -> None:
    src = dict(WEB, filters={"modalities": ["mr", "OP"], "series_description": "*TOF*", "date_from": datetime.date(2020, 1, 2), "date_to": "20211231"})
    cfg = parse_site_config(_raw(tmp_path, src), base_dir=tmp_path)
    folder, pacs = cfg.sources
    assert isinstance(folder, FolderSource) and isinstance(pacs, PacsSource)
    assert pacs.kind is PacsKind.DICOMWEB
    assert pacs.endpoint.url == "http://127.0.0.1:8042/dicom-web"  # trailing slash dropped
    assert pacs.path == (tmp_path / "state" / "pacs" / "research").resolve()
    assert pacs.filters.modalities == frozenset({"MR", "OP"})
    assert pacs.filters.date_from == datetime.date(2020, 1, 2)
    assert pacs.filters.date_to == datetime.date(2021, 12, 31)
    assert "research: dicomweb http://127.0.0.1:8042/dicom-web [user u, password from $PACS_PW" in cfg.describe()


def test_dimse_source_defaults_and_c_move(tmp_path: Path) -> None:
    cfg = parse_site_config(_raw(tmp_path, DIMSE, dict(DIMSE, name="moved", retrieve="c-move", move_port=11113)), base_dir=tmp_path)
    get, move = cfg.sources[1:]
    assert get.retrieve is RetrieveMethod.C_GET and get.endpoint.calling_ae == "ANONFED" and get.max_concurrency == 4
    assert move.retrieve is RetrieveMethod.C_MOVE and move.move_port == 11113


def test_password_never_in_repr_or_describe(tmp_path: Path) -> None:
    src = {k: v for k, v in WEB.items() if k != "password_env"} | {"password": "s3cret-value", "destination": "self"}
    cfg = parse_site_config(_raw(tmp_path, src), base_dir=tmp_path)
    assert "s3cret-value" not in repr(cfg) and "s3cret-value" not in cfg.describe()
    assert cfg.sources[1].endpoint.resolve_password() == "s3cret-value"
    assert cfg.sources[1].destination is cfg.sources[1].endpoint


def test_password_env_resolved_at_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_site_config(_raw(tmp_path, WEB), base_dir=tmp_path)
    monkeypatch.delenv("PACS_PW", raising=False)
    with pytest.raises(ConfigError, match="PACS_PW is not set"):
        cfg.sources[1].endpoint.resolve_password()
    assert "password from $PACS_PW (NOT SET)" in cfg.describe()
    monkeypatch.setenv("PACS_PW", "from-env")
    assert cfg.sources[1].endpoint.resolve_password() == "from-env"
    assert "password from $PACS_PW (set)" in cfg.describe() and "from-env" not in cfg.describe()


def test_bad_password_value_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\[1\]\.password: expected a string") as info:
        parse_site_config(_raw(tmp_path, dict(WEB, password_env=None, password=987654321)), base_dir=tmp_path)
    assert "987654321" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"kind": "ftp"}, r"sources\[1\]\.kind"),
        (dict(WEB, url=None), r"sources\[1\]\.url: required"),
        (dict(WEB, url="pacs:8042"), r"sources\[1\]\.url: expected an http"),
        (dict(WEB, url="http://u:p@pacs/dicom-web"), r"sources\[1\]\.url: put credentials"),
        (dict(WEB, host="x"), r"sources\[1\]\.host: only applies"),
        (dict(WEB, name="Bad Name"), r"sources\[1\]\.name"),
        (dict(WEB, max_concurrency=0), r"sources\[1\]\.max_concurrency"),
        (dict(WEB, password="p"), r"sources\[1\]\.password: give either"),
        (dict(WEB, username=None), r"sources\[1\]\.username: required"),
        (dict(WEB, password_env="1BAD"), r"sources\[1\]\.password_env"),
        (dict(WEB, retrieve="c-get"), r"sources\[1\]\.retrieve: only applies"),
        (dict(WEB, colour=1), r"sources\[1\]\.colour: unknown key"),
        (dict(WEB, filters={"modalities": ["M R"]}), r"sources\[1\]\.filters\.modalities\[0\]"),
        (dict(WEB, filters={"date_from": "yesterday"}), r"sources\[1\]\.filters\.date_from"),
        (dict(WEB, filters={"date_from": "2021-01-02", "date_to": "2021-01-01"}), r"sources\[1\]\.filters\.date_to"),
        (dict(WEB, filters={"study": 1}), r"sources\[1\]\.filters\.study: unknown"),
        (dict(WEB, destination="elsewhere"), r"sources\[1\]\.destination: expected 'self'"),
        (dict(WEB, destination={"kind": "dimse", "host": "h", "port": 0, "called_ae": "A"}), r"sources\[1\]\.destination\.port"),
        (dict(DIMSE, port=70000), r"sources\[1\]\.port"),
        (dict(DIMSE, host=None), r"sources\[1\]\.host: required"),
        (dict(DIMSE, called_ae="WAY-TOO-LONG-AE-TITLE"), r"sources\[1\]\.called_ae"),
        (dict(DIMSE, url="http://x"), r"sources\[1\]\.url: only applies"),
        (dict(DIMSE, retrieve="c-store"), r"sources\[1\]\.retrieve: expected"),
        (dict(DIMSE, retrieve="c-move"), r"sources\[1\]\.move_port"),
        (dict(DIMSE, move_port=104), r"sources\[1\]\.move_port: only used"),
        (dict(DIMSE, timeout_s=-1), r"sources\[1\]\.timeout_s"),
    ],
)
def test_bad_pacs_values_name_the_key(tmp_path: Path, source: dict, key: str) -> None:
    source = {k: v for k, v in source.items() if v is not None}
    with pytest.raises(ConfigError, match=key):
        parse_site_config(_raw(tmp_path, source), base_dir=tmp_path)


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\[2\]\.name: 'research' is used twice"):
        parse_site_config(_raw(tmp_path, WEB, WEB), base_dir=tmp_path)
