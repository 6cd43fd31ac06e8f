"""Colour fundus photographs (PNG/JPEG) and the CSV that grades them.

Images are decoded with Pillow to (H, W, 3) uint8 RGB (grey or 16-bit images are converted; a
truncated or corrupt stream is ``undecodable``; Pillow's decompression-bomb limit applies).

Grades CSV (source option ``fundus_grades_csv``): columns ``file,grade[,patient]``; ``file`` is
relative to the CSV's folder; ``grade`` is the diabetic-retinopathy grade, an integer 0-4. The
patient identifier is the ``patient`` column, else the text before the first underscore of the
file name. A row with any other grade is ``bad-grade`` (the image is quarantined, not guessed);
a row naming a file that does not exist is an ``orphan-label``. Images without a row are
catalogued with grade unknown.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from agent.ingest.quarantine import Quarantined, Reason, scrub

GRADES = range(0, 5)


@dataclasses.dataclass(frozen=True)
class GradeRow:
    grade: int
    patient: str | None


@dataclasses.dataclass(frozen=True)
class BadGradeRow:
    path: Path
    reason: Reason
    detail: str


def read_fundus(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes to (H, W, 3) uint8.

    Raises
    ------
    Quarantined
        ``undecodable`` if Pillow cannot decode the whole image; ``unsupported-image`` if it is
        too small to be a photograph.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.mode in ("I;16", "I;16B", "I"):
                    arr = np.asarray(img, dtype=np.float64)
                    arr = (255.0 * arr / max(arr.max(), 1.0)).astype(np.uint8)
                    rgb = np.repeat(arr[..., None], 3, axis=2)
                else:
                    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Quarantined(Reason.UNDECODABLE, f"image stream cannot be decoded ({scrub(str(exc))})") from exc
    if min(rgb.shape[:2]) < 8:
        raise Quarantined(Reason.UNSUPPORTED_IMAGE, f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small")
    return np.ascontiguousarray(rgb)


def patient_from_file_name(name: str) -> str:
    """Default patient identifier: text before the first underscore (the stem if none)."""
    return Path(name).name.split("_", 1)[0].split(".", 1)[0]


def read_grades(path: Path) -> tuple[dict[Path, GradeRow], list[BadGradeRow]]:
    """Parse a grades CSV into ``{resolved image path: GradeRow}`` plus the rows it rejects.

    Raises
    ------
    Quarantined
        ``unknown-format`` if the header lacks ``file`` or ``grade``.
    """
    good: dict[Path, GradeRow] = {}
    bad: list[BadGradeRow] = []
    with path.open("r", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower() for f in (reader.fieldnames or [])}
        if not {"file", "grade"} <= fields:
            raise Quarantined(Reason.UNKNOWN_FORMAT, "grades CSV needs columns file,grade[,patient]")
        for line, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            if not row.get("file"):
                continue
            image = (path.parent / row["file"]).resolve()
            grade_text = row.get("grade", "")
            try:
                grade = int(grade_text)
            except ValueError:
                grade = -1
            if grade not in GRADES or str(grade) != grade_text.lstrip("+"):
                # the value itself is not echoed: a shifted column could put an identifier there
                bad.append(BadGradeRow(image, Reason.BAD_GRADE, f"CSV line {line}: grade is not an integer 0-4"))
                continue
            if not image.is_file():
                bad.append(BadGradeRow(image, Reason.ORPHAN_LABEL, f"CSV line {line}: graded image file does not exist"))
                continue
            good[image] = GradeRow(grade, row.get("patient") or None)
    return good, bad
