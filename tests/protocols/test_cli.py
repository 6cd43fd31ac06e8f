"""The anonfed CLI frame: help works, errors map to exit codes with help text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from protocols import cli
from protocols.errors import AnonfedError, all_error_classes


def test_every_error_has_distinct_exit_code_and_help() -> None:
    classes = all_error_classes()
    # A subclass may specialise its parent without a code of its own (it then exits like the parent);
    # every class that declares a code must declare a distinct one.
    codes = [c.exit_code for c in classes if "exit_code" in vars(c)]
    assert len(codes) == len(set(codes)), "exit codes must be unique per error class"
    for c in classes:
        assert c.help_text and c.help_text != AnonfedError.help_text or c is AnonfedError


def test_help_lists_site_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("ingest", "phantoms", "check-config"):
        assert command in out


def test_config_error_becomes_exit_code(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check-config", str(tmp_path / "missing.yaml")])
    assert code == 3
    assert "cannot read site config" in capsys.readouterr().err


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "protocols.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "anonfed" in proc.stdout
