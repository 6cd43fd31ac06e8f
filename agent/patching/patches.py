"""Axial 2-D image+label patches from labelled TOF-MRA volumes (Kossen et al. 2021/2022).

Per volume, ``per_volume`` patches of ``size`` x ``size`` pixels: a ``vessel_fraction`` of them
centred on a random vessel voxel, the rest on a random voxel of the head mask
(:func:`agent.patching.head_mask.head_mask`). Channel 0 is the image scaled to [-1, 1] per volume
with robust percentiles; channel 1 is the label as -1 / +1 (the GANs generate both jointly).
Borders are padded (image -1, label -1) so every patch is ``size`` x ``size``.

Every patch carries its patient key: DP training samples and clips per patient, and train/test
splits must be by patient (:meth:`PatchSet.subset`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from agent.patching.head_mask import head_mask
from agent.records import LabeledVolume
from protocols.atomic_files import write_bytes_atomic
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5  # robust intensity range mapped to [-1, 1]
NPZ_FORMAT = "anonfed-patchset-1"


@dataclasses.dataclass(frozen=True)
class PatchSet:
    """Patches and their patients.

    ``images`` float32 (N, 2, S, S): channel 0 image in [-1, 1], channel 1 label in {-1, +1}.
    ``patient_keys`` str (N,); ``patient_index`` int64 (N,) into ``patients`` (sorted, distinct).
    ``centres`` int64 (N, 3) (z, y, x) of each patch centre in its volume, and ``vessel_centred``
    bool (N,), are optional bookkeeping (None when unknown).

    Raises
    ------
    ValueError
        If shapes, dtypes or the key/index correspondence are inconsistent.
    """

    images: np.ndarray
    patient_keys: np.ndarray
    patient_index: np.ndarray
    patients: tuple[str, ...]
    centres: np.ndarray | None = None
    vessel_centred: np.ndarray | None = None

    def __post_init__(self) -> None:
        im = self.images
        if im.dtype != np.float32 or im.ndim != 4 or im.shape[1] != 2 or im.shape[2] != im.shape[3]:
            raise ValueError(f"images must be float32 (N, 2, S, S), got {im.dtype} {im.shape}")
        n = im.shape[0]
        if self.patient_keys.shape != (n,) or self.patient_index.shape != (n,) or self.patient_index.dtype != np.int64:
            raise ValueError(
                f"patient_keys and patient_index (int64) must be ({n},), got {self.patient_keys.shape} "
                f"and {self.patient_index.shape} {self.patient_index.dtype}"
            )
        if list(self.patients) != sorted(set(self.patients)):
            raise ValueError("patients must be sorted and distinct")
        if n and (self.patient_index.min() < 0 or self.patient_index.max() >= len(self.patients)):
            raise ValueError("patient_index out of range of patients")
        if n and not np.array_equal(np.asarray(self.patients, dtype=str)[self.patient_index], self.patient_keys.astype(str)):
            raise ValueError("patient_keys disagree with patients[patient_index]")
        if self.centres is not None and self.centres.shape != (n, 3):
            raise ValueError(f"centres must be ({n}, 3), got {self.centres.shape}")
        if self.vessel_centred is not None and self.vessel_centred.shape != (n,):
            raise ValueError(f"vessel_centred must be ({n},), got {self.vessel_centred.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Patch edge S in pixels."""
        return int(self.images.shape[2])

    @property
    def num_patients(self) -> int:
        return len(self.patients)

    def subset(self, patient_keys: Iterable[str]) -> "PatchSet":
        """Only the patches of the given patients (for patient-level splits).

        Raises
        ------
        BadInputError
            If a key is not a patient of this set (a typo would otherwise give an empty split).
        """
        wanted = sorted(set(patient_keys))
        unknown = [k for k in wanted if k not in set(self.patients)]
        if unknown:
            raise BadInputError(
                f"subset: {len(unknown)} patient key(s) are not in this patch set of {self.num_patients} patients; "
                "pass keys from PatchSet.patients"
            )
        keep = np.isin(self.patient_keys, wanted)
        keys = self.patient_keys[keep]
        return PatchSet(
            images=self.images[keep],
            patient_keys=keys,
            patient_index=np.searchsorted(np.asarray(wanted, dtype=str), keys.astype(str)).astype(np.int64),
            patients=tuple(wanted),
            centres=None if self.centres is None else self.centres[keep],
            vessel_centred=None if self.vessel_centred is None else self.vessel_centred[keep],
        )

    def save_npz(self, path: Path) -> None:
        """Write the set as a compressed ``.npz`` (plain arrays, no pickles), atomically."""
        arrays = {
            "format": np.array(NPZ_FORMAT),
            "images": self.images,
            "patient_keys": self.patient_keys.astype(str),
            "patient_index": self.patient_index,
            "patients": np.asarray(self.patients, dtype=str).reshape(-1),
        }
        if self.centres is not None:
            arrays["centres"] = self.centres
        if self.vessel_centred is not None:
            arrays["vessel_centred"] = self.vessel_centred
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_bytes_atomic(Path(path), buffer.getvalue())

    @classmethod
    def load_npz(cls, path: Path) -> "PatchSet":
        """Read a set written by :meth:`save_npz` (``allow_pickle=False``).

        Raises
        ------
        BadInputError
            If the file is missing, not an npz, holds object arrays, or is not a patch set.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if "format" not in data or str(data["format"]) != NPZ_FORMAT:
                    raise BadInputError(f"{path} is not an anonfed patch set (expected format {NPZ_FORMAT})")
                return cls(
                    images=data["images"],
                    patient_keys=data["patient_keys"],
                    patient_index=data["patient_index"],
                    patients=tuple(str(p) for p in data["patients"]),
                    centres=data["centres"] if "centres" in data else None,
                    vessel_centred=data["vessel_centred"] if "vessel_centred" in data else None,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise BadInputError(f"cannot load patch set {path}: {exc}") from exc


def extract_patches(
    volumes: Sequence[LabeledVolume],
    *,
    size: int,
    per_volume: int,
    vessel_fraction: float = 0.5,
    rng: np.random.Generator,
) -> PatchSet:
    """Cut ``per_volume`` axial patches of ``size`` x ``size`` from each volume.

    Parameters
    ----------
    volumes
        Labelled TOF volumes; several volumes may belong to one patient.
    size
        Patch edge in pixels (the centre pixel is at index ``size // 2``).
    per_volume
        Patches per volume; ``round(per_volume * vessel_fraction)`` are vessel-centred.
    vessel_fraction
        Share of vessel-centred patches (0.5 in the seed papers).
    rng
        Source of all randomness (same generator state, same patches).

    Raises
    ------
    BadInputError
        If ``volumes`` is empty, a number is out of range, or a volume has no head to sample from.
    """
    if not volumes:
        raise BadInputError("extract_patches: no volumes given; ingest at least one labelled TOF volume")
    if size < 2 or per_volume < 1 or not 0.0 <= vessel_fraction <= 1.0:
        raise BadInputError(
            f"extract_patches: expected size >= 2, per_volume >= 1 and 0 <= vessel_fraction <= 1, "
            f"got size={size}, per_volume={per_volume}, vessel_fraction={vessel_fraction}"
        )
    # One preallocated output: patches are copied once, straight from the padded slices.
    images = np.empty((len(volumes) * per_volume, 2, size, size), dtype=np.float32)
    keys, centres, vessel_flags = [], [], []
    for number, volume in enumerate(volumes):
        image = scale_to_unit_range(volume.image)
        label = np.where(volume.label > 0, np.float32(1.0), np.float32(-1.0))
        n_vessel = int(round(per_volume * vessel_fraction))
        vessel_voxels = np.argwhere(volume.label > 0)
        if n_vessel and len(vessel_voxels) == 0:
            log.warning("volume %d has an empty vessel label; its vessel-centred patches are drawn in the head", number)
            n_vessel = 0
        head_voxels = np.argwhere(head_mask(volume.image))
        if len(head_voxels) == 0:
            raise BadInputError(f"extract_patches: volume {number} has an empty head mask (blank image?); exclude it")
        chosen = [
            _pick(vessel_voxels, n_vessel, rng),
            _pick(head_voxels, per_volume - n_vessel, rng),
        ]
        volume_centres = np.concatenate(chosen).astype(np.int64)
        _cut(np.stack([image, label], axis=1), volume_centres, size, out=images[number * per_volume : (number + 1) * per_volume])
        centres.append(volume_centres)
        vessel_flags.append(np.arange(per_volume) < n_vessel)
        keys.extend([volume.patient_key] * per_volume)
    key_array = np.asarray(keys, dtype=str)
    patients = tuple(sorted(set(keys)))
    return PatchSet(
        images=images,
        patient_keys=key_array,
        patient_index=np.searchsorted(np.asarray(patients, dtype=str), key_array).astype(np.int64),
        patients=patients,
        centres=np.concatenate(centres),
        vessel_centred=np.concatenate(vessel_flags),
    )


def scale_to_unit_range(image: np.ndarray) -> np.ndarray:
    """Map the robust intensity range (0.5th-99.5th percentile) of a volume to [-1, 1], clipped."""
    lo, hi = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:
        return np.full(image.shape, -1.0, dtype=np.float32)
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def _pick(voxels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows of ``voxels`` (without replacement when there are enough)."""
    if count == 0:
        return np.empty((0, 3), dtype=np.int64)
    rows = rng.choice(len(voxels), size=count, replace=count > len(voxels))
    return voxels[rows]


def _cut(stacked: np.ndarray, centres: np.ndarray, size: int, *, out: np.ndarray) -> None:
    """Fill ``out`` (N, 2, S, S) with patches of a (Z, 2, Y, X) stack, padded with -1 at the borders."""
    before, after = size // 2, size - size // 2
    padded = np.pad(stacked, ((0, 0), (0, 0), (before, after), (before, after)), constant_values=-1.0)
    # In padded coordinates the patch of centre (y, x) starts at (y, x): the offset cancels.
    for n, (z, y, x) in enumerate(centres):
        out[n] = padded[z, :, y : y + size, x : x + size]
