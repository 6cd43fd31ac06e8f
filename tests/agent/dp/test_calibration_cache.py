"""The on-disk calibration cache: served across processes, keyed by every input, never unsafe."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.dp import accounting, calibration_cache
from agent.dp.accounting import AccountantKind, epsilon_of
from agent.dp.calibration_cache import cached_noise_multiplier, calibration_cache_path, calibration_key

REPO = Path(__file__).resolve().parents[3]
RDP_INPUTS = dict(target_epsilon=3.0, delta=1e-5, sample_rate=0.2, steps=30, kind=AccountantKind.RDP)

_CHILD = """
import json, sys, time
from pathlib import Path
from agent.dp import calibration_cache
from agent.dp.accounting import AccountantKind
calls = []
real = calibration_cache.calibrate_noise_multiplier
calibration_cache.calibrate_noise_multiplier = lambda **kw: calls.append(kw) or real(**kw)
start = time.perf_counter()
sigma = calibration_cache.cached_noise_multiplier(
    Path(sys.argv[1]), target_epsilon=2.0, delta=1e-5, sample_rate=0.25, steps=4, kind=AccountantKind.PRV
)
print(json.dumps({"sigma": sigma, "seconds": time.perf_counter() - start, "searches": len(calls)}))
"""


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would: nothing remembered in memory."""
    monkeypatch.setattr(calibration_cache, "_MEMO", {})


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records every real calibration search (a cache miss)."""
    calls: list[dict] = []
    real = calibration_cache.calibrate_noise_multiplier
    monkeypatch.setattr(calibration_cache, "calibrate_noise_multiplier", lambda **kw: calls.append(kw) or real(**kw))
    return calls


def _child(path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=240, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_process_is_served_from_the_cache_faster_with_the_identical_sigma(tmp_path: Path) -> None:
    path = calibration_cache_path(tmp_path / "accountant")
    first = _child(path)
    second = _child(path)
    assert first["searches"] == 1 and second["searches"] == 0
    assert second["sigma"] == first["sigma"]
    assert second["seconds"] < first["seconds"] / 3, (first, second)
    assert epsilon_of([(second["sigma"], 0.25, 4)], delta=1e-5, kind=AccountantKind.PRV) <= 2.0


def test_the_cache_sits_beside_not_among_the_dataset_accountants(tmp_path: Path) -> None:
    cached_noise_multiplier(calibration_cache_path(tmp_path), **RDP_INPUTS)
    assert list(tmp_path.glob("*.json")) == []  # status lists <accountant>/*.json as datasets
    assert calibration_cache_path(tmp_path).is_file()


@pytest.mark.parametrize(
    "change",
    [
        {"target_epsilon": 3.5},
        {"delta": 1e-6},
        {"sample_rate": 0.25},
        {"steps": 31},
    ],
)
def test_any_changed_input_misses_the_cache(tmp_path: Path, searches: list[dict], change: dict) -> None:
    path = calibration_cache_path(tmp_path)
    base = cached_noise_multiplier(path, **RDP_INPUTS)
    assert cached_noise_multiplier(path, **RDP_INPUTS) == base and len(searches) == 1
    calibration_cache._MEMO.clear()
    other = cached_noise_multiplier(path, **{**RDP_INPUTS, **change})
    assert len(searches) == 2 and other != base


def test_a_changed_accountant_kind_search_setting_or_library_version_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    base = calibration_key(**RDP_INPUTS)
    assert calibration_key(**{**RDP_INPUTS, "kind": AccountantKind.PRV}) != base
    monkeypatch.setattr(accounting, "_CALIBRATION_REL_TOL", accounting._CALIBRATION_REL_TOL / 2)
    assert calibration_key(**RDP_INPUTS) != base
    monkeypatch.undo()
    calibration_cache._environment.cache_clear()
    monkeypatch.setattr(calibration_cache.importlib.metadata, "version", lambda name: "0.0-other")
    try:
        assert calibration_key(**RDP_INPUTS) != base
    finally:
        monkeypatch.undo()
        calibration_cache._environment.cache_clear()
    assert calibration_key(**RDP_INPUTS) == base


def test_a_changed_search_tolerance_misses_the_cache(tmp_path: Path, searches: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    path = calibration_cache_path(tmp_path)
    cached_noise_multiplier(path, **RDP_INPUTS)
    calibration_cache._MEMO.clear()
    monkeypatch.setattr(accounting, "_CALIBRATION_REL_TOL", accounting._CALIBRATION_REL_TOL / 4)
    cached_noise_multiplier(path, **RDP_INPUTS)
    assert len(searches) == 2


def test_a_corrupted_cache_file_is_ignored_with_a_warning_and_rewritten(
    tmp_path: Path, searches: list[dict], caplog: pytest.LogCaptureFixture
) -> None:
    path = calibration_cache_path(tmp_path)
    expected = cached_noise_multiplier(path, **RDP_INPUTS)
    calibration_cache._MEMO.clear()
    path.write_bytes(b'{"schema_version": 1, "entries": {"trunc')
    with caplog.at_level(logging.WARNING, logger="agent.dp.calibration_cache"):
        assert cached_noise_multiplier(path, **RDP_INPUTS) == expected
    assert "ignoring unreadable calibration cache" in caplog.text
    assert len(searches) == 2
    entries = json.loads(path.read_text())["entries"]
    assert entries[calibration_key(**RDP_INPUTS)]["noise_multiplier"] == expected


def test_a_cached_sigma_too_small_for_the_target_is_never_returned(
    tmp_path: Path, searches: list[dict], caplog: pytest.LogCaptureFixture
) -> None:
    path = calibration_cache_path(tmp_path)
    honest = cached_noise_multiplier(path, **RDP_INPUTS)
    calibration_cache._MEMO.clear()
    doc = json.loads(path.read_text())
    doc["entries"][calibration_key(**RDP_INPUTS)]["noise_multiplier"] = honest * 0.8  # a weaker mechanism
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="agent.dp.calibration_cache"):
        sigma = cached_noise_multiplier(path, **RDP_INPUTS)
    assert "discarding it" in caplog.text
    assert sigma == honest and len(searches) == 2
    q, steps, delta = RDP_INPUTS["sample_rate"], RDP_INPUTS["steps"], RDP_INPUTS["delta"]
    assert epsilon_of([(sigma, q, steps)], delta=delta, kind=AccountantKind.RDP) <= RDP_INPUTS["target_epsilon"]
    assert json.loads(path.read_text())["entries"][calibration_key(**RDP_INPUTS)]["noise_multiplier"] == honest
