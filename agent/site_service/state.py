"""What a site remembers between messages (each Flower message runs in a fresh process).

Under ``<state_dir>/federation/``: the last locally trained (DP) model of each task and its
provenance, the fingerprints of the real DP-GAN patches (for the egress guard's copy check), the
guard's blocked-message log, and a copy of every synthetic release. Nothing here leaves the site
except through a reply that passed the guard. Every write is atomic (temp file, fsync, replace).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import SiteConfig
from protocols.atomic_files import write_bytes_atomic
from protocols.errors import BadInputError, IntegrityError
from protocols.messages import canonical_array_bytes, weights_sha256
from protocols.tasks import Task

DEFAULT_MODEL_SLOT = "last_model"


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """Provenance of the last model this site trained and released."""

    run_id: str
    round: int
    dataset_id: str
    architecture: str
    patch_size: int
    weights_sha256: str
    epsilon_cumulative: float
    delta: float
    unit: str
    num_patients: int


class SiteState:
    """Durable federation state of one site."""

    def __init__(self, site: SiteConfig) -> None:
        self.root = site.state.root / "federation"

    @property
    def blocked_log(self) -> Path:
        return self.root / "egress-blocked.jsonl"

    @property
    def releases(self) -> Path:
        return self.root / "released"

    @staticmethod
    def model_slot(task: Task) -> str:
        """File stem of the last released model of ``task``: DP-GAN keeps ``last_model`` (what
        synthesize queries sample); other tasks keep theirs apart so they never replace it."""
        return DEFAULT_MODEL_SLOT if task is Task.DPGAN else f"last_model-{task.value}"

    def save_model(self, record: ModelRecord, weights: dict[str, np.ndarray], *, slot: str = DEFAULT_MODEL_SLOT) -> None:
        """Store the released weights and their provenance (weights first, then the record)."""
        buf = io.BytesIO()
        np.savez(buf, **weights)
        write_bytes_atomic(self.root / f"{slot}.npz", buf.getvalue())
        write_bytes_atomic(self.root / f"{slot}.json", json.dumps(dataclasses.asdict(record), sort_keys=True).encode())

    def load_model(self, *, slot: str = DEFAULT_MODEL_SLOT) -> tuple[ModelRecord, dict[str, np.ndarray]]:
        """The last released model (of the task whose :meth:`model_slot` is ``slot``).

        Raises
        ------
        BadInputError
            If this site has not trained a model yet.
        IntegrityError
            If the stored weights do not match their recorded digest.
        """
        meta = self.root / f"{slot}.json"
        if not meta.is_file():
            raise BadInputError("this site has no trained model yet; run a training round before asking for samples")
        record = ModelRecord(**json.loads(meta.read_text(encoding="utf-8")))
        with np.load(self.root / f"{slot}.npz", allow_pickle=False) as data:
            weights = {k: data[k] for k in data.files}
        if weights_sha256(weights) != record.weights_sha256:
            raise IntegrityError("the stored model does not match its recorded digest; retrain before sampling")
        return record, weights

    def save_fingerprints(self, fingerprints: frozenset[str]) -> None:
        write_bytes_atomic(self.root / "real_fingerprints.json", json.dumps(sorted(fingerprints)).encode())

    def load_fingerprints(self) -> frozenset[str]:
        path = self.root / "real_fingerprints.json"
        return frozenset(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else frozenset()

    def save_release(self, sha256: str, samples: np.ndarray, provenance: dict[str, Any]) -> Path:
        """Keep the site's own copy of what it released (the coordinator stores the same bytes)."""
        path = self.releases / f"{sha256}.npy"
        write_bytes_atomic(path, canonical_array_bytes(samples))
        write_bytes_atomic(path.with_suffix(".json"), json.dumps(provenance, sort_keys=True).encode())
        return path
