"""Walk the source folders, apply the file limits and sniff each file's format.

Rules:

* Folders are walked recursively. Hidden entries (name starting with ``.``) are skipped, and so is
  the site's own state folder if it lies inside a source.
* Symbolic links are followed only if ``ingest.follow_symlinks`` is true. A link that leads back to
  one of its own parent folders is a **directory loop** and is quarantined (the walk goes on); a
  folder reached a second time by another route is skipped silently (its files are already
  listed); a broken link is **unreadable**.
* Empty files, files above ``ingest.max_file_bytes`` and files we may not read are quarantined
  here, before anything opens them; special files (FIFOs, devices) are never opened.
* The format is decided from the first bytes (DICOM preamble, PNG/JPEG magic, NIfTI magic), not
  from the name; the name only refines the reason code of an unknown file.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
import zlib
from pathlib import Path
from typing import Sequence

from agent.config import FolderSource, IngestSettings
from agent.ingest.quarantine import Reason

HEAD_BYTES = 4096
_DICOM_NAME_SUFFIXES = (".dcm", ".dicom", ".ima")


class FileFormat(str, enum.Enum):
    DICOM = "dicom"
    NIFTI = "nifti"
    PNG = "png"
    JPEG = "jpeg"
    CSV = "csv"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class FoundFile:
    """A regular file that passed the size and permission limits."""

    path: Path
    size: int
    mtime_ns: int
    source_index: int


@dataclasses.dataclass(frozen=True)
class ScanProblem:
    """An entry quarantined by the walk itself (never opened)."""

    path: Path
    reason: Reason
    detail: str


@dataclasses.dataclass
class ScanResult:
    files: list[FoundFile] = dataclasses.field(default_factory=list)
    problems: list[ScanProblem] = dataclasses.field(default_factory=list)
    skipped_hidden: int = 0
    skipped_symlinks: int = 0
    skipped_revisits: int = 0


def scan_sources(
    sources: Sequence[FolderSource], settings: IngestSettings, *, exclude: Path | None = None
) -> ScanResult:
    """List every candidate file under ``sources`` (see the module docstring for the rules)."""
    result = ScanResult()
    visited: set[tuple[int, int]] = set()
    excluded = _dir_id(exclude) if exclude is not None and exclude.is_dir() else None
    for index, source in enumerate(sources):
        root_id = _dir_id(source.path)
        if root_id is None or root_id in visited:
            continue
        visited.add(root_id)
        stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [(source.path, frozenset({root_id}))]
        while stack:
            folder, ancestors = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                result.problems.append(ScanProblem(folder, Reason.UNREADABLE, f"folder cannot be listed ({exc.strerror})"))
                continue
            for entry in entries:
                _visit(entry, index, ancestors, visited, excluded, settings, stack, result)
    return result


def _visit(
    entry: os.DirEntry,
    index: int,
    ancestors: frozenset[tuple[int, int]],
    visited: set[tuple[int, int]],
    excluded: tuple[int, int] | None,
    settings: IngestSettings,
    stack: list[tuple[Path, frozenset[tuple[int, int]]]],
    result: ScanResult,
) -> None:
    path = Path(entry.path)
    if entry.name.startswith("."):
        result.skipped_hidden += 1
        return
    is_link = entry.is_symlink()
    if is_link and not settings.follow_symlinks:
        result.skipped_symlinks += 1
        return
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        what = "broken symbolic link" if is_link else f"cannot stat ({exc.strerror})"
        result.problems.append(ScanProblem(path, Reason.UNREADABLE, what))
        return
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            result.problems.append(
                ScanProblem(path, Reason.DIRECTORY_LOOP, "symbolic link points back to one of its parent folders; not followed")
            )
        elif key == excluded:
            return
        elif key in visited:
            result.skipped_revisits += 1
        else:
            visited.add(key)
            stack.append((path, ancestors | {key}))
        return
    if not stat.S_ISREG(st.st_mode):
        result.problems.append(ScanProblem(path, Reason.UNKNOWN_FORMAT, "not a regular file (FIFO, socket or device); never opened"))
        return
    if st.st_size == 0:
        result.problems.append(ScanProblem(path, Reason.EMPTY_FILE, "file has 0 bytes"))
        return
    if st.st_size > settings.max_file_bytes:
        result.problems.append(
            ScanProblem(
                path,
                Reason.FILE_TOO_LARGE,
                f"{st.st_size} bytes > ingest.max_file_bytes={settings.max_file_bytes}; raise the limit to ingest it",
            )
        )
        return
    if not os.access(path, os.R_OK):
        result.problems.append(ScanProblem(path, Reason.UNREADABLE, "permission denied"))
        return
    result.files.append(FoundFile(path, st.st_size, st.st_mtime_ns, index))


def _dir_id(path: Path | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return (st.st_dev, st.st_ino)


def sniff_format(head: bytes, name: str) -> FileFormat:
    """Decide a file's format from its first :data:`HEAD_BYTES` bytes (and its name for CSV).

    DICOM files without the 128-byte preamble (old or raw datasets) are recognised by a first
    tag in group 0x0002 or 0x0008, as written by every DICOM encoder.
    """
    lower = name.lower()
    if len(head) >= 132 and head[128:132] == b"DICM":
        return FileFormat.DICOM
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileFormat.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return FileFormat.JPEG
    if head.startswith(b"\x1f\x8b"):
        inner = _gunzip_head(head)
        if lower.endswith(".nii.gz") or _is_nifti_header(inner):
            return FileFormat.NIFTI
    if _is_nifti_header(head):
        return FileFormat.NIFTI
    if lower.endswith(".csv"):
        return FileFormat.CSV
    if _looks_like_raw_dicom(head):
        return FileFormat.DICOM
    return FileFormat.UNKNOWN


def unknown_reason(name: str) -> Reason:
    """Reason code for a file whose format was not recognised."""
    return Reason.NOT_DICOM if name.lower().endswith(_DICOM_NAME_SUFFIXES) else Reason.UNKNOWN_FORMAT


def _is_nifti_header(head: bytes) -> bool:
    return (len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")) or (len(head) >= 8 and head[4:8] == b"n+2\x00")


def _gunzip_head(head: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
    except zlib.error:
        return b""


def _looks_like_raw_dicom(head: bytes) -> bool:
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group in (0x0002, 0x0008) and element <= 0x0020:
            vr = head[4:6]
            if vr.isalpha() and vr.isupper():
                return True
            length = int.from_bytes(head[4:8], order)
            if length < 1024:
                return True
    return False
