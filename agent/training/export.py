"""Write sampled synthetic image+label pairs as NPZ, NIfTI and PNG grids, labelled with their privacy.

Every file name carries the epsilon tag (``eps-8`` or ``eps-inf``) and a JSON sidecar states the
guarantee; a model trained without DP is written as ``eps-inf`` with "no privacy guarantee".
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from protocols.atomic_files import write_bytes_atomic

NO_PRIVACY = "no privacy guarantee (trained without differential privacy; epsilon = infinity)"


@dataclasses.dataclass(frozen=True)
class PrivacyLabel:
    """The guarantee of a released model or its samples."""

    epsilon: float  # math.inf without DP
    delta: float | None
    unit: str | None  # "patient" | "image" | None without DP

    @property
    def tag(self) -> str:
        """File-name fragment: ``eps-inf`` or ``eps-7.93``."""
        return "eps-inf" if math.isinf(self.epsilon) else f"eps-{self.epsilon:.3g}"

    def describe(self) -> str:
        if math.isinf(self.epsilon):
            return NO_PRIVACY
        return f"({self.epsilon:.4g}, {self.delta:g})-differential privacy per {self.unit}"

    def as_json(self) -> dict[str, object]:
        return {
            "epsilon": "inf" if math.isinf(self.epsilon) else self.epsilon,
            "delta": self.delta,
            "unit": self.unit,
            "guarantee": self.describe(),
        }


def png_grid(pairs: np.ndarray, *, columns: int = 8, max_pairs: int = 64) -> np.ndarray:
    """uint8 grid image: each cell is image | label side by side (1-pixel gaps)."""
    pairs = pairs[:max_pairs]
    n, _, s, _ = pairs.shape
    rows = max(1, math.ceil(n / columns))
    cell_w = 2 * s + 1
    grid = np.zeros((rows * (s + 1), columns * (cell_w + 1)), np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        img = np.clip((pairs[i, 0] + 1) * 127.5, 0, 255).astype(np.uint8)
        lab = (np.clip(pairs[i, 1], 0, 1) * 255).astype(np.uint8)
        y, x = r * (s + 1), c * (cell_w + 1)
        grid[y : y + s, x : x + s] = img
        grid[y : y + s, x + s + 1 : x + cell_w] = lab
    return grid


def export_pairs(
    pairs: np.ndarray, out_dir: Path, *, stem: str, privacy: PrivacyLabel, metadata: dict[str, object] | None = None
) -> dict[str, Path]:
    """Write ``pairs`` (n, 2, S, S; image in [-1, 1], label in {0, 1}) in every format; return the paths.

    Files: ``{stem}_{tag}.npz`` (``images``, ``labels``), ``{stem}_{tag}_image.nii.gz`` and
    ``_label.nii.gz`` (one patch per slice), ``{stem}_{tag}_grid.png`` and ``{stem}_{tag}.json``.
    """
    out_dir = Path(out_dir)
    base = f"{stem}_{privacy.tag}"
    paths = {
        "npz": out_dir / f"{base}.npz",
        "nifti_image": out_dir / f"{base}_image.nii.gz",
        "nifti_label": out_dir / f"{base}_label.nii.gz",
        "png": out_dir / f"{base}_grid.png",
        "json": out_dir / f"{base}.json",
    }
    images = pairs[:, 0].astype(np.float32)
    labels = (pairs[:, 1] > 0.5).astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels, epsilon=np.float64(privacy.epsilon))
    write_bytes_atomic(paths["npz"], buf.getvalue())
    # NIfTI (x, y, z): patch rows/columns in-plane, one patch per slice.
    for key, arr in (("nifti_image", images), ("nifti_label", labels)):
        img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.eye(4))
        img.header["descrip"] = f"anonfed synthetic {privacy.tag}".encode()[:79]
        write_bytes_atomic(paths[key], img.to_bytes() if not str(paths[key]).endswith(".gz") else _gzip(img.to_bytes()))
    png = io.BytesIO()
    Image.fromarray(png_grid(pairs)).save(png, format="PNG")
    write_bytes_atomic(paths["png"], png.getvalue())
    doc = {"synthetic": True, "count": int(pairs.shape[0]), "privacy": privacy.as_json(), **(metadata or {})}
    write_bytes_atomic(paths["json"], json.dumps(doc, indent=1, sort_keys=True).encode())
    return paths


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)
