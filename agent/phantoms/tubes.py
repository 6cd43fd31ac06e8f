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
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    upper = np.asarray(shape) - 1
    for a, b, r0, r1, v in zip(tubes.starts, tubes.ends, tubes.r0, tubes.r1, tubes.value):
        reach = max(r0, r1) + margin
        lo = np.floor((np.minimum(a, b) - reach) / spacing_arr).astype(int)
        hi = np.ceil((np.maximum(a, b) + reach) / spacing_arr).astype(int)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, upper)
        if np.any(hi < lo):
            continue  # segment entirely outside the grid
        box = tuple(slice(l, h + 1) for l, h in zip(lo, hi))
        # One broadcastable coordinate vector per axis keeps memory at the box size.
        rel = [
            (np.arange(l, h + 1) * s - a[k]).reshape([-1 if j == k else 1 for j in range(dim)])
            for k, (l, h, s) in enumerate(zip(lo, hi, spacing_arr))
        ]
        ab = b - a
        length2 = float(ab @ ab)
        if length2 > 0:
            t = sum(rel[k] * ab[k] for k in range(dim)) / length2
            t = np.clip(t, 0.0, 1.0)
        else:
            t = np.zeros([1] * dim)
        dist2 = sum((rel[k] - t * ab[k]) ** 2 for k in range(dim))
        local = (np.sqrt(dist2) - (r0 + t * (r1 - r0))).astype(np.float32)
        target = sd[box]
        closer = local < target
        target[closer] = local[closer]
        val[box][closer] = v
    return sd, val


def partial_volume(sd: np.ndarray, *, edge_width: float) -> np.ndarray:
    """Fraction of a voxel inside the tubes: a linear ramp ``edge_width`` wide centred on the surface."""
    return np.clip(0.5 - sd / edge_width, 0.0, 1.0).astype(np.float32)
