"""Site config validation: every bad value is named by its key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import load_site_config, parse_site_config
from protocols.errors import ConfigError
from protocols.tasks import PrivacyUnit, Task


def _raw(tmp_path: Path, **overrides):
    (tmp_path / "data").mkdir(exist_ok=True)
    raw = {
        "site_id": "hospital-a",
        "sources": [{"path": "data"}],
        "state_dir": "state",
        "privacy": {"max_epsilon": 8, "delta": "1e-5", "accepted_tasks": ["dpgan"]},
    }
    raw.update(overrides)
    return raw


def test_valid_config_resolves_paths_and_defaults(tmp_path: Path) -> None:
    cfg = parse_site_config(_raw(tmp_path), base_dir=tmp_path)
    assert cfg.sources[0].path == (tmp_path / "data").resolve()
    assert cfg.state.catalog == (tmp_path / "state" / "catalog.sqlite").resolve()
    assert cfg.privacy.delta == pytest.approx(1e-5)
    assert cfg.privacy.unit is PrivacyUnit.PATIENT
    assert cfg.privacy.accepted_tasks == frozenset({Task.DPGAN})


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"site_id": "Hospital A"}, "site_id"),
        ({"sources": []}, "sources"),
        ({"sources": [{"path": "missing"}]}, r"sources\[0\]\.path"),
        ({"sources": [{"path": "data", "colour": 1}]}, r"sources\[0\]\.colour"),
        ({"privacy": {"max_epsilon": -1, "delta": 1e-5}}, "privacy.max_epsilon"),
        ({"privacy": {"max_epsilon": float("inf"), "delta": 1e-5}}, "privacy.max_epsilon"),
        ({"privacy": {"max_epsilon": 8, "delta": 2}}, "privacy.delta"),
        ({"privacy": {"max_epsilon": 8, "delta": 1e-5, "unit": "study"}}, "privacy.unit"),
        ({"privacy": {"max_epsilon": 8, "delta": 1e-5, "min_k": 1}}, "privacy.min_k"),
        ({"privacy": {"max_epsilon": 8, "delta": 1e-5, "accepted_tasks": ["raw-export"]}}, r"accepted_tasks\[0\]"),
        ({"privacy": {"delta": 1e-5}}, "privacy.max_epsilon: required"),
        ({"privacy": {"max_epsilon": 8, "delta": 1e-5, "ksalsa_groups": "kmeans"}}, r"privacy.ksalsa_groups: expected one of"),
        ({"ingest": {"follow_symlinks": "yes"}}, "ingest.follow_symlinks"),
        ({"typo_key": 1}, "typo_key: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, override: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_site_config(_raw(tmp_path, **override), base_dir=tmp_path)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_site_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site_config(bad)


def test_relaxed_privacy_warns_every_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = _raw(tmp_path, privacy={"max_epsilon": 50, "delta": 1e-5, "unit": "image", "min_k": 2})
    with caplog.at_level(logging.WARNING):
        parse_site_config(raw, base_dir=tmp_path)
        parse_site_config(raw, base_dir=tmp_path)
    assert sum("max_epsilon=50" in r.message for r in caplog.records) == 2
    assert any("unit=image" in r.message for r in caplog.records)
    assert any("min_k=2" in r.message for r in caplog.records)


def test_example_site_configs_are_valid() -> None:
    examples = sorted((Path(__file__).parents[2] / "deploy" / "examples").glob("site-*.yaml"))
    assert examples, "deploy/examples must hold at least one site config"
    for path in examples:
        # Example sources point at folders created by `anonfed phantoms`; only structure is checked here.
        try:
            load_site_config(path)
        except ConfigError as exc:
            assert "does not exist" in str(exc), f"{path.name}: {exc}"
