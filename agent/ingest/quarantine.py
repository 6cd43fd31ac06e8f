"""Why an input was quarantined: the reason codes and the exception that carries them.

Every input the ingest cannot use ends up in the catalog's quarantine table with one
:class:`Reason` and a short detail text. The detail is written for the operator and must never
contain a patient identifier or a path: :func:`scrub` removes the file's path and name from
library error messages (nibabel and Pillow quote the file name, and file names often hold an MRN).
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

from protocols.errors import IngestError

_MAX_DETAIL = 300


class Reason(str, enum.Enum):
    """Reason codes shown by ``anonfed quarantine`` (stable strings: they are stored)."""

    UNKNOWN_FORMAT = "unknown-format"  # not DICOM, NIfTI, PNG/JPEG or a configured CSV
    NOT_DICOM = "not-dicom"  # named or sniffed as DICOM but does not parse as DICOM
    CORRUPT_HEADER = "corrupt-header"  # DICOM/NIfTI header parses but holds invalid values
    EMPTY_FILE = "empty-file"
    TRUNCATED_PIXEL_DATA = "truncated-pixel-data"  # fewer pixel bytes than rows*cols*frames need
    MISSING_PIXEL_DATA = "missing-pixel-data"  # an image SOP class without Pixel Data
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported-transfer-syntax"  # no installed decoder knows it
    UNDECODABLE = "undecodable"  # a decoder exists but the compressed stream is broken
    INCONSISTENT_SLICES = "inconsistent-slices"  # gap, duplicate, or mixed geometry in a series
    LABEL_MISMATCH = "label-mismatch"  # label shape or geometry differs from its image
    NON_FINITE_VALUES = "non-finite-values"  # NaN or inf voxels
    FILE_TOO_LARGE = "file-too-large"  # above ingest.max_file_bytes
    DIRECTORY_LOOP = "directory-loop"  # a symbolic link leads back to one of its parents
    UNREADABLE = "unreadable"  # permission denied, broken link, I/O error
    MISSING_LABEL = "missing-label"  # a manifest names a label file that does not exist
    ORPHAN_LABEL = "orphan-label"  # a label (SEG, *_label.nii, grade row) without its image
    BAD_GRADE = "bad-grade"  # a grades CSV row whose grade is not an integer 0-4
    MISSING_PATIENT_ID = "missing-patient-id"  # no PatientID and no StudyInstanceUID to key on
    UNSUPPORTED_IMAGE = "unsupported-image"  # decodes, but not a shape/kind we can use
    INGEST_ERROR = "ingest-error"  # an unforeseen failure (a bug or library error); please report


class Quarantined(IngestError):
    """One input cannot be ingested; the pipeline records it and moves on.

    Parameters
    ----------
    reason
        The reason code stored in the catalog.
    detail
        Operator-facing explanation; must not contain identifiers or paths (use :func:`scrub`).
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail[:_MAX_DETAIL]


def scrub(text: str, path: Path | None = None) -> str:
    """Remove a file's path, its name and anything path-like from an error message.

    Library messages (nibabel, Pillow, pydicom) often quote the file name; file names often hold
    medical record numbers, so the catalog and the logs must never see them.
    """
    if path is not None:
        for token in sorted({str(path), str(path.resolve()), path.name, path.stem}, key=len, reverse=True):
            if token:
                text = text.replace(token, "<file>")
    text = re.sub(r"(/[^\s'\"]+)+", "<path>", text)
    return " ".join(text.split())[:_MAX_DETAIL]
