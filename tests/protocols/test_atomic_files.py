"""Tests for protocols.atomic_files: content, mode, rollback on error, folder fsync."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from protocols import atomic_files
from protocols.atomic_files import atomic_write, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_content_written(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    write_bytes_atomic(target, b"\x00\x01abc")
    assert target.read_bytes() == b"\x00\x01abc"
    write_text_atomic(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    write_json_atomic(target, {"b": 1, "a": [1, 2]}, sort_keys=True, indent=1)
    assert target.read_text() == json.dumps({"b": 1, "a": [1, 2]}, sort_keys=True, indent=1)
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}


def test_mode_applied(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_bytes_atomic(target, b"secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_bytes_atomic(target, b"public", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_mode_set_before_data(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    with atomic_write(target, mode=0o640) as fh:
        assert stat.S_IMODE(os.fstat(fh.fileno()).st_mode) == 0o640
        fh.write(b"x")


def test_exception_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as fh:
            fh.write(b"half-")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_folder_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    folder_fsyncs: list[Path] = []
    real_folder = atomic_files.fsync_folder

    def spy_folder(folder: Path) -> None:
        folder_fsyncs.append(folder)
        real_folder(folder)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(atomic_files, "fsync_folder", spy_folder)
    write_bytes_atomic(tmp_path / "f", b"data")
    assert len(calls) == 2  # the file and the folder
    assert folder_fsyncs == [tmp_path]


def test_exclusive_write_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "seed"
    write_bytes_atomic(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed"]  # no temp file left behind
