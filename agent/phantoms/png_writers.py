"""PNG encoding of fundus phantoms and the site's ``grades.csv`` (columns ``file,grade,patient``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from protocols.atomic_files import write_bytes_atomic, write_text_atomic

GRADES_COLUMNS = ("file", "grade", "patient")


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG, atomically; no metadata chunks (deterministic bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", optimize=False, compress_level=6)
    write_bytes_atomic(path, buffer.getvalue())


def write_grades_csv(path: Path, rows: Iterable[tuple[str, int, str]]) -> None:
    """Write ``grades.csv``: ``file`` is relative to the CSV's folder (POSIX separators)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GRADES_COLUMNS)
    for file, grade, patient in rows:
        writer.writerow((file, int(grade), patient))
    write_text_atomic(path, buffer.getvalue())
