"""Poisson sampling of privacy units: patients (default) or single patches.

The amplification-by-sampling analysis the accountants use assumes every unit joins a batch
independently with probability ``q``; so batches have a random size (possibly zero). With the
patient unit a sampled patient brings at most ``patches_per_patient`` of their patches (a fresh
random subset each step) and their per-sample gradients are summed into one per-patient gradient
before clipping, so a patient's whole influence on a step is bounded by the clipping norm.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from protocols.errors import BadInputError
from protocols.tasks import PrivacyUnit


@dataclasses.dataclass(frozen=True)
class UnitBatch:
    """One step's batch: patch indices, the unit (0..num_units-1) each patch belongs to, unit count."""

    sample_index: torch.Tensor  # (B,) int64 into the patch array
    unit_index: torch.Tensor  # (B,) int64 in [0, num_units)
    num_units: int


class UnitSampler:
    """Draws Poisson-sampled batches of patients or patches.

    Parameters
    ----------
    patient_index:
        ``(N,)`` integer patient of every patch (0..P-1).
    unit:
        ``PrivacyUnit.PATIENT`` samples patients, ``PrivacyUnit.IMAGE`` samples patches.
    sample_rate:
        Inclusion probability ``q`` of each unit per step.
    patches_per_patient:
        Cap on a sampled patient's patches per step (patient unit only).
    generator:
        Explicit torch RNG.
    """

    def __init__(
        self,
        patient_index: np.ndarray,
        *,
        unit: PrivacyUnit,
        sample_rate: float,
        patches_per_patient: int,
        generator: torch.Generator,
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise BadInputError(f"sample_rate: expected 0 < q <= 1, got {sample_rate}")
        if patches_per_patient < 1:
            raise BadInputError(f"patches_per_patient: expected >= 1, got {patches_per_patient}")
        idx = torch.as_tensor(np.asarray(patient_index), dtype=torch.int64)
        if idx.dim() != 1 or idx.numel() == 0:
            raise BadInputError("patient_index: expected a non-empty 1-D array of patient numbers")
        self.unit = PrivacyUnit(unit)
        self.sample_rate = float(sample_rate)
        self.patches_per_patient = patches_per_patient
        self.generator = generator
        self.num_patches = idx.numel()
        order = torch.argsort(idx, stable=True)
        counts = torch.bincount(idx)
        self.members = [m for m in torch.split(order, counts.tolist()) if m.numel()]

    @property
    def num_units(self) -> int:
        """Population size the sample rate refers to."""
        return len(self.members) if self.unit is PrivacyUnit.PATIENT else self.num_patches

    def draw(self) -> UnitBatch:
        """One Poisson-sampled batch (may be empty)."""
        chosen = torch.nonzero(torch.rand(self.num_units, generator=self.generator) < self.sample_rate).flatten()
        if self.unit is PrivacyUnit.IMAGE:
            return UnitBatch(chosen, torch.arange(chosen.numel()), int(chosen.numel()))
        samples, units = [], []
        for local, patient in enumerate(chosen.tolist()):
            mem = self.members[patient]
            if mem.numel() > self.patches_per_patient:
                mem = mem[torch.randperm(mem.numel(), generator=self.generator)[: self.patches_per_patient]]
            samples.append(mem)
            units.append(torch.full((mem.numel(),), local, dtype=torch.int64))
        if not samples:
            empty = torch.zeros(0, dtype=torch.int64)
            return UnitBatch(empty, empty, 0)
        return UnitBatch(torch.cat(samples), torch.cat(units), len(samples))
