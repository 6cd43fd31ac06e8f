"""Checking written DICOM files with ``dciodvfy`` (Debian ``dicom3tools``), when it is installed.

dciodvfy prints its findings on stderr and exits 1 when any line starts with ``Error -``; its
warnings (e.g. empty type-2C Laterality) are reported but do not fail a file.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from protocols.errors import BadInputError

DCIODVFY = "dciodvfy"


@dataclasses.dataclass(frozen=True)
class Findings:
    """What dciodvfy said about one file."""

    path: Path
    iod: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def have_dciodvfy() -> bool:
    return shutil.which(DCIODVFY) is not None


def validate_file(path: Path, *, timeout_s: float = 60.0) -> Findings:
    """Run dciodvfy on one file.

    Raises
    ------
    BadInputError
        If dciodvfy is not installed (install Debian package dicom3tools).
    """
    exe = shutil.which(DCIODVFY)
    if exe is None:
        raise BadInputError("dciodvfy is not installed; install the Debian package dicom3tools to validate DICOM output")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = tuple(ln for ln in lines if ln.startswith("Error"))
    warnings = tuple(ln for ln in lines if ln.startswith("Warning"))
    iod = next((ln for ln in lines if not ln.startswith(("Error", "Warning"))), "")
    if proc.returncode != 0 and not errors:
        errors = (f"Error - dciodvfy exited with {proc.returncode}",)
    return Findings(Path(path), iod, errors, warnings)


def validate_files(paths: list[Path]) -> list[Findings]:
    """dciodvfy findings for every file, in order."""
    return [validate_file(p) for p in paths]
