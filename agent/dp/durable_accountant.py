"""The site's durable privacy accountant: one append-only DP-SGD history per site and dataset.

Invariants
----------
* Write-ahead: :meth:`DurableAccountant.reserve` writes the spend of a whole block of steps to
  disk (temp file in the same folder, fsync, ``os.replace``, fsync of the folder) *before* the
  caller runs any of those steps. A crash can therefore only over-count, never under-count.
* The policy is checked before writing: a reservation that would push epsilon past the site's
  ``max_epsilon`` raises :class:`~protocols.errors.BudgetExceededError` and leaves the file as it was,
  so the history on disk never exceeds the policy.
* The file is tagged with the accountant kind and a schema version; a different kind or an
  unknown version is refused (:class:`~protocols.errors.AccountingError`), never reinterpreted.
* Read-check-write happens under an exclusive ``flock`` on ``<file>.lock`` and re-reads the file
  first, so two processes reserving at once (e.g. two Flower messages) cannot lose an update.
* Floats are written with Python's shortest round-trip repr, so a restored history is bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Iterator

from agent.dp.accounting import AccountantKind, HistoryEntry, epsilon_of
from protocols.atomic_files import write_json_atomic
from protocols.errors import AccountingError, BadInputError, BudgetExceededError
from protocols.tasks import PrivacyUnit, Task

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Reservation:
    """One block of DP-SGD steps charged ahead of running them."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    unit: PrivacyUnit
    label: str  # what the steps were for (e.g. "round 3"); no patient data
    reserved_at: float  # unix time
    max_grad_norm: float | None = None  # clip norm C; None in files written before it was recorded
    task: Task | None = None  # the task that trained (dpgan, stylegan-dp); None likewise

    def as_entry(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def accountant_path(state_dir: Path, dataset_id: str) -> Path:
    """Where the history of ``dataset_id`` lives under the site's accountant folder.

    Raises
    ------
    BadInputError
        If ``dataset_id`` could escape the folder or is not a plain name.
    """
    if not _DATASET_ID.match(dataset_id) or ".." in dataset_id:
        raise BadInputError(
            f"dataset_id: expected 1-128 letters, digits, '.', '_' or '-' (no path), got {dataset_id!r}"
        )
    return Path(state_dir) / f"{dataset_id}.json"


class DurableAccountant:
    """Append-only DP history persisted as JSON; epsilon via :func:`agent.dp.accounting.epsilon_of`.

    Parameters
    ----------
    path:
        The JSON file (created on the first reservation).
    kind:
        Accountant analysis; an existing file of another kind is refused.
    delta:
        The delta at which epsilon is reported and the budget is checked.
    """

    def __init__(self, path: Path, *, kind: AccountantKind = AccountantKind.PRV, delta: float) -> None:
        self.path = Path(path)
        self.kind = AccountantKind(kind)
        self.delta = float(delta)
        self.reservations: list[Reservation] = self._load()

    # -- reading ------------------------------------------------------------------------------
    def _load(self) -> list[Reservation]:
        if not self.path.exists():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AccountingError(
                f"accountant file {self.path.name} cannot be read ({exc}); it is the only record of spent "
                "privacy budget: restore it from backup, never delete it"
            ) from exc
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise AccountingError(
                f"accountant file {self.path.name}: schema_version {doc.get('schema_version')!r}, "
                f"this agent reads {SCHEMA_VERSION}; use the agent version that wrote it"
            )
        if doc.get("accountant") != self.kind.value:
            raise AccountingError(
                f"accountant file {self.path.name} was written by the {doc.get('accountant')!r} accountant, "
                f"refusing to read it as {self.kind.value!r}; open it with the same accountant kind"
            )
        try:
            return [
                Reservation(
                    float(e["noise_multiplier"]),
                    float(e["sample_rate"]),
                    int(e["steps"]),
                    PrivacyUnit(e["unit"]),
                    str(e["label"]),
                    float(e["reserved_at"]),
                    None if e.get("max_grad_norm") is None else float(e["max_grad_norm"]),
                    None if e.get("task") is None else Task(e["task"]),
                )
                for e in doc["history"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountingError(f"accountant file {self.path.name} has a malformed history entry: {exc}") from exc

    @property
    def history(self) -> list[HistoryEntry]:
        """The ``(noise_multiplier, sample_rate, steps)`` triples in order."""
        return [r.as_entry() for r in self.reservations]

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.reservations)

    def epsilon(self) -> float:
        """Cumulative epsilon of everything reserved so far, at this accountant's delta."""
        return epsilon_of(self.history, delta=self.delta, kind=self.kind)

    def epsilon_if(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Cumulative epsilon if ``steps`` more steps were taken (nothing is written)."""
        return epsilon_of(self.history + [(noise_multiplier, sample_rate, steps)], delta=self.delta, kind=self.kind)

    # -- writing ------------------------------------------------------------------------------
    def reserve(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        unit: PrivacyUnit,
        max_epsilon: float,
        label: str = "",
        max_grad_norm: float | None = None,
        task: Task | None = None,
    ) -> float:
        """Durably charge ``steps`` steps before they run; return the new cumulative epsilon.

        ``max_grad_norm`` (the clip norm the steps run with) and ``task`` are recorded so that a
        claim made later for these steps, e.g. after a crash, states them; epsilon depends on neither.

        Raises
        ------
        BudgetExceededError
            If the new cumulative epsilon would exceed ``max_epsilon``; nothing is written.
        BadInputError
            If the mechanism parameters are invalid.
        """
        if steps < 1:
            raise BadInputError(f"steps: expected >= 1 steps to reserve, got {steps}")
        if noise_multiplier <= 0:
            raise BadInputError(
                f"noise_multiplier: DP steps need noise > 0, got {noise_multiplier}; non-DP training is not accounted"
            )
        with self._exclusive():
            self.reservations = self._load()  # another process may have reserved since we opened
            if any(r.noise_multiplier == 0 for r in self.reservations):
                raise BudgetExceededError(
                    "a model trained WITHOUT differential privacy was already released from this dataset "
                    "(epsilon = infinity), so no DP guarantee can be given any more; use a different dataset"
                )
            after = self.epsilon_if(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
            if after > max_epsilon:
                before = self.epsilon()
                raise BudgetExceededError(
                    f"{steps} more DP steps (noise multiplier {noise_multiplier:.4g}, sample rate {sample_rate:.4g}) "
                    f"would raise epsilon from {before:.4g} to {after:.4g} at delta={self.delta:g}, above the site "
                    f"policy max_epsilon={max_epsilon:g}; nothing was trained. Plan fewer steps or more noise, or "
                    "raise privacy.max_epsilon at the site"
                )
            reservation = Reservation(float(noise_multiplier), float(sample_rate), int(steps), PrivacyUnit(unit), label,
                                      time.time(), None if max_grad_norm is None else float(max_grad_norm),
                                      None if task is None else Task(task))
            self._write(self.reservations + [reservation])
            self.reservations.append(reservation)
        log.info("reserved %d DP steps; cumulative epsilon now %.4g (delta %g)", steps, after, self.delta)
        return after

    def record_non_private_release(self, *, steps: int, unit: PrivacyUnit, label: str = "") -> None:
        """Durably record that a model trained WITHOUT DP on this dataset is about to be released.

        It is stored as noise multiplier 0 (epsilon = infinity): from then on the dataset has no
        finite privacy guarantee and every later DP reservation is refused.
        """
        reservation = Reservation(0.0, 1.0, max(int(steps), 1), PrivacyUnit(unit), label or "non-DP release", time.time())
        with self._exclusive():
            self.reservations = self._load()
            self._write(self.reservations + [reservation])
            self.reservations.append(reservation)
        log.warning("recorded a release WITHOUT differential privacy: epsilon is now infinite for this dataset")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _document(self, reservations: list[Reservation]) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "accountant": self.kind.value,
            "delta": self.delta,
            "history": [
                {
                    "noise_multiplier": r.noise_multiplier,
                    "sample_rate": r.sample_rate,
                    "steps": r.steps,
                    "unit": r.unit.value,
                    "label": r.label,
                    "reserved_at": r.reserved_at,
                    "max_grad_norm": r.max_grad_norm,
                    "task": None if r.task is None else r.task.value,
                }
                for r in reservations
            ],
        }

    def _write(self, reservations: list[Reservation]) -> None:
        atomic_write_json(self.path, self._document(reservations))


def atomic_write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` atomically as ``json.dumps(doc, indent=1, sort_keys=True)``.

    Thin wrapper over :func:`protocols.atomic_files.write_json_atomic` fixing the accountant's
    file format.
    """
    write_json_atomic(path, doc, sort_keys=True, indent=1)
