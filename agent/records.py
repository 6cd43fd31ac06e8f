"""In-memory records handed from ingest to patching and training.

They carry a patient *key* (the site's keyed pseudonym), never a real identifier, and never a path.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabeledVolume:
    """One TOF-MRA volume with its vessel label, in canonical (z, y, x) voxel order.

    ``spacing_mm`` is (z, y, x). ``image`` is float32 in scanner units; ``label`` is uint8 {0, 1}
    with the same shape.
    """

    patient_key: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape != self.label.shape:
            raise ValueError(f"image {self.image.shape} and label {self.label.shape} must be equal 3-D shapes")


@dataclasses.dataclass(frozen=True)
class FundusImage:
    """One colour fundus photograph (H, W, 3) uint8 with its DR grade 0-4 (None if unknown)."""

    patient_key: str
    rgb: np.ndarray
    grade: int | None

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"fundus image must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")


@dataclasses.dataclass(frozen=True)
class LabeledImage2D:
    """One 2-D grey-level image (rows, cols) with its vessel label, e.g. a synthetic TOF patch read back.

    ``image`` is float32 in the stored grey values of the file (the synthetic TOF export writes
    0..4095); ``label`` is uint8 {0, 1} with the same shape.
    """

    patient_key: str
    image: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.shape != self.label.shape:
            raise ValueError(f"image {self.image.shape} and label {self.label.shape} must be equal 2-D shapes")
