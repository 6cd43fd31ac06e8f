"""Atomic file replacement shared by the agent and the coordinator.

Guarantee: a reader of ``path`` sees either the old file or the complete new one, never a
half-written one, and once a write function returns the new file survives a power cut. The data
goes to a temp file in the same folder (so ``os.replace`` is a same-filesystem rename), is flushed
and fsynced, replaces ``path`` and then the folder is fsynced so the rename itself is durable.

Stdlib only: protocols must stay importable without torch or numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["TEMP_GLOB", "atomic_write", "write_bytes_atomic", "write_text_atomic", "write_json_atomic"]

#: What an interrupted write leaves behind (``.<name>.<random>.tmp`` next to ``<name>``): callers
#: that own a folder remove these on start-up.
TEMP_GLOB = ".*.tmp"


def fsync_folder(folder: Path) -> None:
    """Fsync ``folder`` so a rename inside it survives a power cut."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_write(path: Path, *, mode: int | None = None, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file whose content atomically replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path
        Destination; its parent folder is created if missing.
    mode
        Permission bits (e.g. ``0o600``) applied to the temp file *before* any data is written,
        so a key file is never readable by others, even briefly. ``None`` keeps mkstemp's 0600.
    exclusive
        Create ``path`` only if it does not exist (a hard link instead of a rename, so of two
        writers racing for a new file exactly one wins and the other gets FileExistsError).

    Raises
    ------
    OSError
        When the folder cannot be written; FileExistsError when ``exclusive`` and ``path`` exists.
        On any exception inside the block the temp file is removed, ``path`` is left untouched and
        the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int | None = None, exclusive: bool = False) -> None:
    """Atomically replace (``exclusive``: create) ``path`` with ``data`` (see :func:`atomic_write`)."""
    with atomic_write(path, mode=mode, exclusive=exclusive) as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8 (see :func:`atomic_write`)."""
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(
    path: Path,
    obj: Any,
    *,
    mode: int | None = None,
    sort_keys: bool = False,
    indent: int | None = None,
    trailing_newline: bool = False,
) -> None:
    """Atomically replace ``path`` with ``json.dumps(obj, sort_keys=sort_keys, indent=indent)``.

    Other json.dumps options stay at their defaults (``ensure_ascii=True``, default separators),
    so callers that relied on ``json.dump``/``json.dumps`` with the same ``sort_keys``/``indent``
    get byte-identical files. ``trailing_newline`` appends ``"\\n"``. Canonical (signed) bytes
    should be produced by the caller and written with :func:`write_bytes_atomic` instead.
    """
    text = json.dumps(obj, sort_keys=sort_keys, indent=indent)
    if trailing_newline:
        text += "\n"
    write_text_atomic(path, text, mode=mode)
