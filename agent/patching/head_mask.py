"""Head (brain) mask of a TOF-MRA volume computed from the image alone.

Threshold (Otsu), drop speckle, keep the largest connected component, fill holes (in 3-D and, since
a volume cut at the neck leaves the head open at the bottom, slice by slice). Random training
patches are centred inside this mask, as in the seed papers (half vessel-centred, half in the brain).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


def head_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the head in a 2-D slice or 3-D (z, y, x) volume.

    Raises
    ------
    ValueError
        If the image is not 2-D or 3-D, or is constant (nothing to separate).
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"head_mask expects a 2-D or 3-D image, got shape {image.shape}")
    values = np.asarray(image, dtype=np.float32)
    if float(values.max()) == float(values.min()):
        raise ValueError("head_mask: the image is constant; no head can be separated from background")
    foreground = values > threshold_otsu(values)
    foreground = ndimage.binary_opening(foreground, iterations=1)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask)
    if mask.ndim == 3:
        for z in range(mask.shape[0]):
            mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask
