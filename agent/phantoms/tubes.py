"""Sub-voxel rendering of tapered tubes (vessel segments) on a 2-D or 3-D grid.

A tube is a line segment from ``a`` to ``b`` (physical units, e.g. mm) whose radius goes linearly
from ``r0`` to ``r1``. For each grid point we compute the signed distance to the tube surface,
``d(point, segment) - r(t)`` where ``t`` is the position of the closest point along the segment, and
keep the minimum over all tubes. Negative inside, positive outside. Callers turn it into an exact
label (centre inside the radius: ``sd <= 0``) and a partial-volume fraction with a soft edge one
voxel wide (:func:`partial_volume`).

Only each segment's bounding box is visited, so cost grows with the vessel volume, not with the
number of segments times the grid size.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Distance reported where no tube is near: far enough outside that the soft edge is exactly zero.
FAR = np.float32(1e6)


@dataclasses.dataclass(frozen=True)
class Tubes:
    """A set of tapered segments in physical coordinates (same axis order as the grid).

    ``starts``/``ends`` are (M, D); ``r0``/``r1`` (M,) radii at start/end; ``value`` (M,) an
    attribute carried to the voxels the segment wins (flow signal, vessel colour, depth...).
    """

    starts: np.ndarray
    ends: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    value: np.ndarray

    def __post_init__(self) -> None:
        m, d = self.starts.shape
        if self.ends.shape != (m, d) or any(x.shape != (m,) for x in (self.r0, self.r1, self.value)):
            raise ValueError("starts/ends must be (M, D) and r0/r1/value (M,) with the same M")

    @property
    def count(self) -> int:
        return int(self.starts.shape[0])

    @classmethod
    def concatenate(cls, parts: list["Tubes"]) -> "Tubes":
        """All segments of several tube sets (empty list -> ValueError)."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of tube sets")
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def signed_distance(
    tubes: Tubes,
    *,
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (physical units) to the nearest tube surface, and that tube's value.

    Grid point ``i`` sits at ``i * spacing`` (point ``0`` at the origin). Points farther than
    ``margin`` outside every tube get :data:`FAR` and value 0.

    Raises
    ------
    ValueError
        If shape, spacing and the tube dimension disagree.
    """
    dim = len(shape)
    if len(spacing) != dim or tubes.starts.shape[1] != dim:
        raise ValueError(f"grid is {dim}-D (spacing {spacing}) but tubes are {tubes.starts.shape[1]}-D")
    sd = np.full(shape, FAR, dtype=np.float32)
    val = np.zeros(shape, dtype=np.float32)
    # Broadcastable coordinate vector per axis, built once; each box takes views of them.
    axes = [
        (np.arange(n, dtype=np.float64) * s).reshape([-1 if j == k else 1 for j in range(dim)])
        for k, (n, s) in enumerate(zip(shape, spacing))
    ]
    # Plain Python floats: per-segment work on tiny arrays is dominated by call overhead.
    for a, b, r0, r1, v in zip(tubes.starts.tolist(), tubes.ends.tolist(), tubes.r0.tolist(),
                               tubes.r1.tolist(), tubes.value.tolist()):
        reach = max(r0, r1) + margin
        box = []
        for k in range(dim):
            lo = max(0, math.floor((min(a[k], b[k]) - reach) / spacing[k]))
            hi = min(shape[k] - 1, math.ceil((max(a[k], b[k]) + reach) / spacing[k]))
            if hi < lo:
                break  # segment entirely outside the grid
            box.append(slice(lo, hi + 1))
        else:
            ab = [b[k] - a[k] for k in range(dim)]
            rel = [axes[k][(slice(None),) * k + (box[k],)] - a[k] for k in range(dim)]
            length2 = sum(x * x for x in ab)
            if length2 > 0:
                t = np.clip(sum(rel[k] * (ab[k] / length2) for k in range(dim)), 0.0, 1.0)
            else:
                t = np.zeros([1] * dim)
            dist2 = sum((rel[k] - t * ab[k]) ** 2 for k in range(dim))
            local = (np.sqrt(dist2) - (r0 + t * (r1 - r0))).astype(np.float32)
            region = tuple(box)
            target = sd[region]
            closer = local < target
            target[closer] = local[closer]
            val[region][closer] = v
    return sd, val


def partial_volume(sd: np.ndarray, *, edge_width: float) -> np.ndarray:
    """Fraction of a voxel inside the tubes: a linear ramp ``edge_width`` wide centred on the surface."""
    return np.clip(0.5 - sd / edge_width, 0.0, 1.0).astype(np.float32)
