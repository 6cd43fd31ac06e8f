"""Atomic writing of DICOM files (temp file in the same folder, fsync, rename)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from protocols.atomic_files import atomic_write


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file at ``path``; a reader never sees a partial file."""
    with atomic_write(Path(path)) as fh:
        ds.save_as(fh, enforce_file_format=True)
