"""Checkpoints of local training runs: tensors and plain numbers only, written atomically.

``torch.save`` of state dicts (no modules, no code) and ``torch.load(weights_only=True)``: loading
a checkpoint can never run code, even one copied from elsewhere.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from protocols.atomic_files import atomic_write
from protocols.errors import BadInputError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    path = Path(path)
    with atomic_write(path) as fh:
        torch.save(state, fh)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises
    ------
    BadInputError
        If the file cannot be read or holds anything but tensors and plain containers.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise BadInputError(
            f"checkpoint {Path(path).name} cannot be loaded as weights only ({exc}); delete it to start the run afresh"
        ) from exc
