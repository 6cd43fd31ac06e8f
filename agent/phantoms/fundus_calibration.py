"""Colour statistics of a real fundus photograph, used to calibrate the phantoms.

``skimage.data.retina()`` is a real, CC0-licensed colour fundus photograph shipped with
scikit-image (no download). We measure the per-channel mean and standard deviation inside its
circular field of view once per process and map every phantom onto them.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

# Pixels whose RGB sum is below this are the black surround of the photograph.
_FOV_THRESHOLD = 30
_EDGE_EROSION_PX = 4  # drop the anti-aliased rim of the field of view


@dataclasses.dataclass(frozen=True)
class ColourStats:
    """Per-channel (R, G, B) mean and standard deviation inside the field of view."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def fov_mask(rgb: np.ndarray) -> np.ndarray:
    """The circular field of view of a fundus photograph: bright, largest component, holes filled."""
    bright = rgb.astype(np.int32).sum(axis=-1) > _FOV_THRESHOLD
    labels, count = ndimage.label(bright)
    if count == 0:
        return bright
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    mask = ndimage.binary_fill_holes(labels == largest)
    return ndimage.binary_erosion(mask, iterations=_EDGE_EROSION_PX)


def colour_stats(rgb: np.ndarray, mask: np.ndarray) -> ColourStats:
    """Per-channel mean and standard deviation of ``rgb`` where ``mask`` is true."""
    pixels = rgb[mask].astype(np.float64)
    return ColourStats(tuple(pixels.mean(axis=0)), tuple(pixels.std(axis=0)))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def reference_stats() -> ColourStats:
    """Colour statistics of ``skimage.data.retina()`` inside its field of view (cached)."""
    from skimage import data

    retina = data.retina()
    return colour_stats(retina, fov_mask(retina))
