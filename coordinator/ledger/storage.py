"""The ledger file on disk: one canonical JSON line per entry, appended write-ahead.

Invariants:

- A record is ``canonical bytes + b"\\n"``; canonical JSON never contains a raw newline, so a
  record is complete exactly when its newline is on disk.
- Appending writes the whole record with one ``O_APPEND`` write, ``fsync``s the file, then
  ``fsync``s the directory. Only then is the entry reported as appended.
- A crash can therefore leave only a *torn tail*: bytes after the last newline. :func:`scan`
  reports them; they are never parsed as an entry. The writer truncates them (logging it) before
  its next append, or refuses if repair is disabled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from protocols.errors import BadInputError

log = logging.getLogger(__name__)

MAX_LEDGER_BYTES = 8 * 1024**3  # a sanity limit, far above 100,000 entries (~0.2 GB)


@dataclasses.dataclass(frozen=True)
class Scan:
    """The complete records of a ledger file and what follows the last one."""

    lines: list[bytes]  # complete records without their newline
    complete_size: int  # bytes up to and including the last newline
    torn_bytes: int  # bytes after the last newline (an interrupted write)


def scan(path: Path) -> Scan:
    """Split a ledger file into complete records and a torn tail.

    A missing file is an empty ledger.

    Raises
    ------
    BadInputError
        If the file cannot be read or exceeds the size limit.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Scan([], 0, 0)
    except OSError as exc:
        raise BadInputError(f"cannot read ledger {path}: {exc.strerror}") from exc
    if size > MAX_LEDGER_BYTES:
        raise BadInputError(f"ledger {path} is {size} bytes, above the {MAX_LEDGER_BYTES}-byte limit")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read ledger {path}: {exc.strerror}") from exc
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1] if end else []
    return Scan(lines, end, len(data) - end)


def fsync_directory(directory: Path) -> None:
    """Make a file creation or rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendOnlyFile:
    """An open ledger file: append whole records durably, truncate a torn tail.

    Holds an exclusive ``flock`` while open, so two coordinators never write one ledger.
    """

    def __init__(self, path: Path) -> None:
        import fcntl

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise BadInputError(
                f"ledger {self.path} is locked by another process; only one coordinator may write a ledger"
            ) from exc
        if created:
            fsync_directory(self.path.parent)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes, durably."""
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)

    def append(self, record: bytes) -> None:
        """Write ``record`` (ending in a newline) in full, then fsync the file and its folder.

        Raises
        ------
        BadInputError
            If the record does not end with exactly one newline.
        """
        if not record.endswith(b"\n") or b"\n" in record[:-1]:
            raise BadInputError("a ledger record must be one line ending in a newline")
        start = self.size()
        view = memoryview(record)
        try:
            while view:  # os.write may write less than asked (signals, full disk); finish or raise
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except BaseException:
            # Leave no half record behind for the next append to build on.
            try:
                self.truncate(start)
            except OSError:
                log.error("could not remove a partly written ledger record; the next open will repair it")
            raise
        fsync_directory(self.path.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1
