"""Stack 2-D slices into a 3-D volume and bring volumes to one canonical orientation.

Slices (single-frame instances of one series, or the frames of an enhanced multi-frame object)
are sorted by Image Position (Patient) projected on the slice normal (row direction x column
direction). A stack is accepted only if every slice has the same rows/columns, orientation and
pixel spacing, the positions lie on one line along the normal, and consecutive positions are
equally spaced: a duplicate position or a gap quarantines the whole series
(``inconsistent-slices``), because a volume with a missing slice would teach a generator wrong
anatomy.

Canonical orientation: every volume (DICOM or NIfTI) is reoriented to the closest RAS+ voxel
axes (nibabel's ``as_closest_canonical``) and handed out as (z, y, x) = (S, A, R) arrays with
spacing (z, y, x) in mm, so a DICOM series and its NIfTI copy give the same array.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from nibabel import orientations

from agent.ingest.dicom_files import FramePlane
from agent.ingest.quarantine import Quarantined, Reason

_ORIENT_TOL = 1e-3
_SPACING_RTOL = 1e-3
_STEP_RTOL = 0.05  # 5% of the slice step: tolerates printed-decimal rounding, not a missing slice
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class StackGeometry:
    """Geometry of a stacked volume in DICOM voxel order (slice k, row j, column i)."""

    shape_kji: tuple[int, int, int]
    affine_lps: np.ndarray  # 4x4: (i, j, k, 1) -> LPS mm

    @property
    def normal(self) -> np.ndarray:
        n = self.affine_lps[:3, 2]
        return n / np.linalg.norm(n)

    def to_json(self) -> dict:
        return {"shape_kji": list(self.shape_kji), "affine_lps": self.affine_lps.round(6).tolist()}

    @classmethod
    def from_json(cls, raw: dict) -> "StackGeometry":
        return cls(tuple(raw["shape_kji"]), np.asarray(raw["affine_lps"], dtype=float))  # type: ignore[arg-type]


def stack_order(planes: Sequence[FramePlane], *, rows: Sequence[int], cols: Sequence[int]) -> tuple[list[int], StackGeometry]:
    """Order of the slices along the normal and the geometry of the resulting stack.

    Raises
    ------
    Quarantined
        ``inconsistent-slices`` on mixed rows/columns, orientation or spacing, off-line
        positions, duplicate positions or gaps.
    """
    if not planes:
        raise Quarantined(Reason.INCONSISTENT_SLICES, "series has no slices")
    if len(set(rows)) != 1 or len(set(cols)) != 1:
        raise Quarantined(Reason.INCONSISTENT_SLICES, f"slices have different sizes: rows {sorted(set(rows))}, columns {sorted(set(cols))}")
    orient = np.asarray([p.orientation for p in planes], dtype=float)
    if np.abs(orient - orient[0]).max() > _ORIENT_TOL:
        raise Quarantined(Reason.INCONSISTENT_SLICES, "slices have different Image Orientation (Patient)")
    spacing = np.asarray([p.pixel_spacing for p in planes], dtype=float)
    if not np.allclose(spacing, spacing[0], rtol=_SPACING_RTOL) or (spacing[0] <= 0).any():
        raise Quarantined(Reason.INCONSISTENT_SLICES, "slices have different or non-positive Pixel Spacing")
    row_dir, col_dir = orient[0, :3], orient[0, 3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 0.5:
        raise Quarantined(Reason.INCONSISTENT_SLICES, "Image Orientation (Patient) row and column directions are not orthogonal")
    normal /= np.linalg.norm(normal)
    pos = np.asarray([p.position for p in planes], dtype=float)
    along = pos @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along_sorted = along[order]
    step = _uniform_step(along_sorted, planes[0].thickness)
    lateral = pos[order] - np.outer(along_sorted - along_sorted[0], normal) - pos[order[0]]
    if np.abs(lateral).max(initial=0.0) > 0.5 * spacing[0].min():
        raise Quarantined(Reason.INCONSISTENT_SLICES, "slice positions do not lie on one line along the slice normal")
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[0, 1]  # i runs along a row: column spacing
    affine[:3, 1] = col_dir * spacing[0, 0]  # j runs down a column: row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = pos[order[0]]
    return order, StackGeometry((len(planes), int(rows[0]), int(cols[0])), affine)


def _uniform_step(along_sorted: np.ndarray, thickness: float | None) -> float:
    if len(along_sorted) == 1:
        return float(thickness) if thickness and thickness > 0 else 1.0
    diffs = np.diff(along_sorted)
    median = float(np.median(diffs))
    if diffs.min() <= _STEP_RTOL * max(median, 1e-6):
        raise Quarantined(Reason.INCONSISTENT_SLICES, f"{int((diffs <= _STEP_RTOL * max(median, 1e-6)).sum())} duplicate slice position(s)")
    if np.abs(diffs - median).max() > _STEP_RTOL * median:
        worst = float(diffs.max())
        raise Quarantined(Reason.INCONSISTENT_SLICES, f"gap in slice positions: step {worst:.3g} mm vs typical {median:.3g} mm")
    return float(diffs.mean())


def to_canonical(volume_kji: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Reorient a (k, j, i) DICOM-ordered volume to canonical (z, y, x) RAS+.

    Returns
    -------
    (volume_zyx, spacing_zyx_mm, affine_ras) where ``affine_ras`` maps (x, y, z) voxel indices of
    the canonical array (transposed back) to RAS mm.
    """
    return canonical_from_xyz(np.transpose(volume_kji, (2, 1, 0)), _LPS_TO_RAS @ affine_lps)


def canonical_from_xyz(data_xyz: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Like nibabel's ``as_closest_canonical`` for a 3-D array; returns (z, y, x) data."""
    ornt = orientations.io_orientation(affine_ras)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        data, new_affine = data_xyz, affine_ras
    else:
        data = orientations.apply_orientation(data_xyz, ornt)
        new_affine = affine_ras @ orientations.inv_ornt_aff(ornt, data_xyz.shape)
    zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))
    spacing_zyx = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0))), spacing_zyx, new_affine
