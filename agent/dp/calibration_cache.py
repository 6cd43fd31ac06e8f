"""A durable per-site cache of noise-multiplier calibrations.

In a Flower deployment every message runs in a fresh ClientApp process, so an in-memory cache
never survives from one round to the next, and the search of
:func:`agent.dp.accounting.calibrate_noise_multiplier` (tens of PRV evaluations) would be redone
every round. This module keeps its answers in one small JSON file under the site's state.

Invariants
----------
* It is only an optimisation. A missing, unreadable or malformed cache file is ignored with a
  warning and the value is recomputed; a failed write is logged and never fails the round.
* Entries are keyed by every input that determines the answer: target epsilon, delta, sample
  rate, steps, accountant kind, the search tolerance and upper bound, a hash of the accounting
  source, and the versions of opacus, numpy and scipy. Any change is a miss.
* A cached value can never weaken the guarantee: before it is returned, epsilon(sigma) is
  recomputed once with the same analysis (one evaluation instead of the search's dozens) and
  the entry is discarded and recomputed if it exceeds the target. This also covers inputs the
  key cannot see (a hand-edited file, a numerical library change below the listed ones).
* Writes are atomic (:func:`agent.dp.durable_accountant.atomic_write_json`). Two processes
  writing at once can at worst lose one entry, which is recomputed next time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from agent.dp import accounting
from agent.dp.accounting import AccountantKind, calibrate_noise_multiplier, epsilon_of
from agent.dp.durable_accountant import atomic_write_json

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_ENTRIES = 64  # a site sees a handful of plans; the oldest entries go first
CACHE_FOLDER = "calibration-cache"  # a sub-folder: the accountant folder's *.json are dataset histories
CACHE_FILE = "noise-multipliers.json"
# Values computed in this process, by key: trusted without a re-check, and shared by all sites
# a process serves (tests, simulations), as the former in-memory cache was.
_MEMO: dict[str, float] = {}


def calibration_cache_path(accountant_dir: Path) -> Path:
    """Where the site keeps its calibration cache, next to (not among) the dataset accountants."""
    return Path(accountant_dir) / CACHE_FOLDER / CACHE_FILE


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, str]:
    """Versions of the code the answer depends on (read once per process)."""
    env: dict[str, str] = {}
    for package in ("opacus", "numpy", "scipy"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = "unknown"
    try:  # a change to the search or the analysis in accounting.py must invalidate old answers
        env["accounting_source"] = hashlib.sha256(inspect.getsource(accounting).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        env["accounting_source"] = "unknown"
    return env


def calibration_key(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: AccountantKind) -> str:
    """Canonical text of every input that determines the calibrated noise multiplier.

    Floats are written with Python's shortest round-trip repr, so equal keys mean bit-equal inputs.
    """
    inputs: dict[str, Any] = {
        "target_epsilon": float(target_epsilon),
        "delta": float(delta),
        "sample_rate": float(sample_rate),
        "steps": int(steps),
        "accountant": AccountantKind(kind).value,
        "relative_tolerance": float(accounting._CALIBRATION_REL_TOL),
        "max_noise_multiplier": float(accounting.MAX_NOISE_MULTIPLIER),
        **_environment(),
    }
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"))


def cached_noise_multiplier(
    cache_path: Path | None,
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    kind: AccountantKind,
) -> float:
    """:func:`~agent.dp.accounting.calibrate_noise_multiplier`, served from ``cache_path`` when it can be.

    With ``cache_path=None`` nothing is read or written (values are still remembered in this
    process). A hit on disk is re-checked with one epsilon
    evaluation; a value whose epsilon exceeds ``target_epsilon`` is never returned.

    Raises
    ------
    BadInputError
        As :func:`~agent.dp.accounting.calibrate_noise_multiplier` (never because of the cache).
    """
    kind = AccountantKind(kind)
    key = calibration_key(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, kind=kind)
    if cache_path is None:
        if key not in _MEMO:
            _MEMO[key] = calibrate_noise_multiplier(
                target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, kind=kind
            )
        return _MEMO[key]
    cache_path = Path(cache_path)
    entries = _read_entries(cache_path)
    if key in _MEMO:
        stored = entries.get(key)
        if not isinstance(stored, dict) or stored.get("noise_multiplier") != _MEMO[key]:
            _store(cache_path, key, _MEMO[key])  # this site's file lacks (or garbles) what we know
        return _MEMO[key]
    hit = entries.get(key)
    if hit is not None:
        sigma = _verified(hit, target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, kind=kind)
        if sigma is not None:
            log.info("noise multiplier %.6g served from the calibration cache", sigma)
            _MEMO[key] = sigma
            return sigma
    started = time.perf_counter()
    sigma = calibrate_noise_multiplier(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, kind=kind
    )
    log.info("calibrated noise multiplier %.6g in %.1f s; caching it", sigma, time.perf_counter() - started)
    _MEMO[key] = sigma
    _store(cache_path, key, sigma)
    return sigma


def _verified(entry: Any, *, target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: AccountantKind) -> float | None:
    """The cached sigma if it is a positive finite number whose epsilon meets the target, else None."""
    try:
        sigma = float(entry["noise_multiplier"])
    except (KeyError, TypeError, ValueError):
        log.warning("calibration cache entry is malformed; recomputing the noise multiplier")
        return None
    if not 0 < sigma < math.inf:
        log.warning("calibration cache holds an invalid noise multiplier %r; recomputing", sigma)
        return None
    eps = epsilon_of([(sigma, sample_rate, steps)], delta=delta, kind=kind)
    if eps > target_epsilon:
        log.warning(
            "cached noise multiplier %.6g gives epsilon %.6g > target %.6g; discarding it and recomputing",
            sigma, eps, target_epsilon,
        )
        return None
    return sigma


def _read_entries(path: Path) -> dict[str, Any]:
    """The cache's entries; an absent file is empty, an unreadable one is empty with a warning."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("schema_version") != SCHEMA_VERSION or not isinstance(doc.get("entries"), dict):
            raise ValueError(f"schema_version {doc.get('schema_version')!r} or entries not understood")
        return doc["entries"]
    except (OSError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        log.warning("ignoring unreadable calibration cache %s (%s); it will be rewritten", path.name, exc)
        return {}


def _store(path: Path, key: str, sigma: float) -> None:
    """Add ``key -> sigma`` (re-reading first, so entries of other processes are kept), atomically."""
    entries = _read_entries(path)
    entries[key] = {"noise_multiplier": float(sigma), "written_at": time.time()}
    if len(entries) > MAX_ENTRIES:  # keep the newest (the file is written with sorted keys, not in order)
        newest = sorted(entries, key=lambda k: _written_at(entries[k]), reverse=True)[:MAX_ENTRIES]
        entries = {k: entries[k] for k in newest}
    try:
        atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "entries": entries})
    except OSError as exc:
        log.warning("could not write the calibration cache %s (%s); the next round recomputes", path.name, exc)


def _written_at(entry: Any) -> float:
    try:
        return float(entry["written_at"])
    except (KeyError, TypeError, ValueError):
        return 0.0
