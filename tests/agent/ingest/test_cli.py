"""``anonfed ingest`` and ``anonfed quarantine`` as an operator sees them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np

from protocols.cli import main

from ingest_builders import mr_series, write_config


def test_quarantine_lists_reason_path_and_detail(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.dcm").touch()
    (data / "notes.txt").write_text("x" * 100)
    config = write_config(tmp_path, [{"path": "data"}])
    assert main(["-q", "ingest", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "quarantined: 2" in out and "empty-file" in out
    assert main(["-q", "quarantine", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "2 quarantined input(s)"
    assert lines[0].startswith("empty-file") and str(data / "empty.dcm") in lines[0] and "0 bytes" in lines[0]
    assert lines[1].startswith("unknown-format") and str(data / "notes.txt") in lines[1]


def test_killed_ingest_leaves_a_consistent_catalog(tmp_path) -> None:
    rng = np.random.default_rng(3)
    for s in range(30):
        mr_series(tmp_path / "data" / f"s{s:02d}", rng.integers(0, 900, (6, 32, 32)).astype(np.int16), patient_id=f"KILL-{s:04d}")
    config = write_config(tmp_path, [{"path": "data"}])
    catalog = tmp_path / "state" / "catalog.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "protocols.cli", "-q", "ingest", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    written = 0
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as conn:
                written = conn.execute("SELECT COUNT(*) FROM series").fetchone()[0]
        except sqlite3.Error:
            written = 0
        if written >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        partial = conn.execute("SELECT COUNT(*) FROM series WHERE status='ok'").fetchone()[0]
    assert proc.returncode == -signal.SIGKILL and 3 <= partial < 30  # killed mid-way
    assert main(["-q", "ingest", "--config", str(config)]) == 0
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("SELECT COUNT(*) FROM series WHERE status='ok'").fetchone()[0] == 30
        assert conn.execute("SELECT COUNT(*) FROM files WHERE status='ok'").fetchone()[0] == 180
