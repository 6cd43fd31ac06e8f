"""Decoded pixel arrays cached as ``.npz`` files keyed by content hash.

Training reads these instead of re-parsing DICOM. A cache entry is written atomically (temporary
file in the same folder, fsync, ``os.replace``) *before* the catalog transaction that refers to
it commits, so a crash leaves at worst an unreferenced cache file, never a dangling reference.
Entries hold only arrays (pixels, spacing): no identifiers, no paths.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from protocols.atomic_files import atomic_write
from protocols.errors import IntegrityError


def combined_key(domain: str, *parts: str) -> str:
    """A cache key derived from several content hashes (order matters; sort first if it must not)."""
    h = hashlib.sha256(domain.encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()


class ArrayCache:
    """A folder of ``<key[:2]>/<key>.npz`` files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def save(self, key: str, **arrays: np.ndarray) -> Path:
        """Write ``arrays`` under ``key`` atomically (an existing entry is left as it is)."""
        target = self.path_for(key)
        if target.is_file():
            return target
        with atomic_write(target) as fh:
            np.savez(fh, **arrays)
        return target

    def load(self, key: str) -> dict[str, np.ndarray]:
        """Read an entry.

        Raises
        ------
        IntegrityError
            If the entry is missing or unreadable (run ``anonfed ingest`` again to rebuild it).
        """
        path = self.path_for(key)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise IntegrityError(
                f"cache entry {key[:12]}... is missing or corrupt; run `anonfed ingest` again to rebuild it"
            ) from exc
