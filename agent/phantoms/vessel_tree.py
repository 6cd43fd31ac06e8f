"""Patient-specific 3-D branching vessel trees (the biometric of a TOF-MRA phantom).

The geometry is loosely modelled on the intracranial arteries seen in a TOF-MRA slab: three trunks
enter from below (two lateral "carotids", one posterior midline "basilar"), rise tortuously, are
joined by a Willis-like ring of thinner communicating segments, and then branch recursively with
radii shrinking at each bifurcation (roughly Murray's law), tapering along each branch and curving
as a persistent random walk kept inside the brain ellipsoid. Everything is drawn from the patient's
generator, so two patients differ everywhere while a follow-up study of the same patient is the
same tree under a small rigid motion (:func:`move_rigidly`).

Coordinates are physical millimetres in (z, y, x) order, matching :class:`agent.records.LabeledVolume`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from agent.phantoms.tubes import Tubes

STEP_MM = 2.2  # length of one straight piece of a branch; curvature comes from many short pieces
MIN_RADIUS_MM = 0.3  # branches thinner than this stop (well below a 0.6 mm voxel)
MAX_DEPTH = 5  # bifurcation generations after the trunks
KEEP_INSIDE = 0.82  # vessels stay within this fraction of the brain ellipsoid


@dataclasses.dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid (z, y, x) in mm."""

    centre: np.ndarray
    semi_axes: np.ndarray

    def normalized_radius(self, points: np.ndarray) -> np.ndarray:
        """1 on the surface, < 1 inside; ``points`` is (..., 3)."""
        return np.sqrt((((points - self.centre) / self.semi_axes) ** 2).sum(axis=-1))

    def outward(self, point: np.ndarray) -> np.ndarray:
        """Unit outward normal direction at the level set through ``point``."""
        g = (point - self.centre) / self.semi_axes**2
        n = np.linalg.norm(g)
        return g / n if n > 0 else np.array([1.0, 0.0, 0.0])


@dataclasses.dataclass(frozen=True)
class VesselTree:
    """A vessel tree as tapered tubes; ``tubes.value`` is the relative inflow signal (1 at trunks)."""

    tubes: Tubes

    @property
    def segment_count(self) -> int:
        return self.tubes.count


class _Builder:
    """Accumulates segments while branches grow (internal)."""

    def __init__(self, rng: np.random.Generator, brain: Ellipsoid) -> None:
        self.rng = rng
        self.brain = brain
        self.rows: list[tuple[np.ndarray, np.ndarray, float, float, float]] = []

    def add(self, a: np.ndarray, b: np.ndarray, r0: float, r1: float, signal: float) -> None:
        self.rows.append((a.copy(), b.copy(), r0, r1, signal))

    def walk(self, start: np.ndarray, direction: np.ndarray, radius: float, *, steps: int, signal: float,
             curvature: float, taper: float, confine: bool = True) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Grow one branch; returns its end point, direction, radius and signal.

        ``confine=False`` is for the trunks, which enter from the neck below the brain ellipsoid.
        """
        p, d, r = start.copy(), _unit(direction), radius
        for _ in range(steps):
            d = _unit(d + curvature * self.rng.normal(size=3))
            q = p + STEP_MM * d
            # Steer back inside when the walk approaches the brain surface (vessels stay intracranial).
            for _ in range(4):
                if not confine or self.brain.normalized_radius(q) <= KEEP_INSIDE:
                    break
                d = _unit(d - 0.7 * self.brain.outward(q))
                q = p + STEP_MM * d
            else:
                break
            r_next = max(r * taper, MIN_RADIUS_MM * 0.9)
            s_next = max(0.45, signal - 0.006 * STEP_MM)  # distal inflow saturation: dimmer downstream
            self.add(p, q, r, r_next, signal)
            p, r, signal = q, r_next, s_next
        return p, d, r, signal

    def branch(self, start: np.ndarray, direction: np.ndarray, radius: float, *, depth: int, signal: float) -> None:
        """A branch and, recursively, its two daughters."""
        if radius < MIN_RADIUS_MM or depth > MAX_DEPTH:
            return
        steps = int(self.rng.integers(5, 12 - depth))
        end, d, r, s = self.walk(start, direction, radius, steps=steps, signal=signal, curvature=0.22, taper=0.97)
        u = _perpendicular(d, self.rng)
        share = self.rng.uniform(0.55, 0.8)  # asymmetric bifurcation: one daughter larger
        big = r * (share**3 + 0.2) ** (1 / 3) * 0.85
        small = r * ((1 - share**3) ** (1 / 3)) * 0.85
        for child_r, sign in ((big, 1.0), (small, -1.0)):
            angle = np.deg2rad(self.rng.uniform(20, 40) if child_r == big else self.rng.uniform(35, 65))
            child_d = np.cos(angle) * d + sign * np.sin(angle) * u
            self.branch(end, child_d, child_r, depth=depth + 1, signal=s * 0.97)

    def tubes(self) -> Tubes:
        a, b, r0, r1, v = zip(*self.rows)
        return Tubes(np.array(a), np.array(b), np.array(r0), np.array(r1), np.array(v))


def grow_vessel_tree(rng: np.random.Generator, *, fov_mm: np.ndarray, brain: Ellipsoid) -> VesselTree:
    """Draw one patient's vessel tree inside ``brain`` (all from ``rng``).

    Parameters
    ----------
    rng
        The patient's generator; the same generator state gives the same tree.
    fov_mm
        Field of view (z, y, x) in mm; trunks enter through the lowest slice.
    brain
        Vessels are kept inside :data:`KEEP_INSIDE` of this ellipsoid.
    """
    fov_mm = np.asarray(fov_mm, dtype=np.float64)
    b = _Builder(rng, brain)
    c, s = brain.centre, brain.semi_axes
    # Trunk entry points (z, y, x): two lateral anterior, one posterior midline; patient-specific jitter.
    entries = [
        np.array([0.0, c[1] - rng.uniform(0.0, 0.25) * s[1], c[2] + side * rng.uniform(0.25, 0.4) * s[2]])
        for side in (-1.0, 1.0)
    ]
    entries.append(np.array([0.0, c[1] + rng.uniform(0.2, 0.4) * s[1], c[2] + rng.uniform(-0.1, 0.1) * s[2]]))
    radii = [rng.uniform(1.2, 1.6), rng.uniform(1.2, 1.6), rng.uniform(1.0, 1.4)]
    tops = []
    for entry, r in zip(entries, radii):
        # Enter through the lowest slice, then rise tortuously.
        entry[0] = fov_mm[0] * 0.02
        rise = int(rng.integers(5, 9))
        up = np.array([1.0, rng.normal(0, 0.3), rng.normal(0, 0.3)])
        tops.append(b.walk(entry, up, r, steps=rise, signal=1.0, curvature=0.3, taper=0.985, confine=False))
    # Willis-like ring: thinner, gently curving communicating vessels between the trunk tops.
    for i in range(3):
        p, _, r, signal = tops[i]
        q, _, r2, _ = tops[(i + 1) % 3]
        rc = 0.45 * min(r, r2)
        bend = rng.normal(0, 0.12 * np.linalg.norm(q - p), size=3)
        points = [p + f * (q - p) + np.sin(np.pi * f) * bend for f in np.linspace(0.0, 1.0, 6)]
        for start, end in zip(points, points[1:]):
            b.add(start, end, rc, rc, signal)
    # Main branches from each trunk top: outward, forward/backward and up, then recursive.
    for p, _, r, signal in tops:
        outward = p - c
        outward[0] = 0.0
        for _ in range(2):
            direction = _unit(0.6 * _unit(outward) + rng.normal(0, 0.6, size=3) + np.array([0.5, 0.0, 0.0]))
            b.branch(p, direction, r * rng.uniform(0.7, 0.85), depth=1, signal=signal)
    return VesselTree(b.tubes())


def move_rigidly(tree: VesselTree, rng: np.random.Generator, *, centre: np.ndarray, shift_mm: float,
                 rotation_deg: float) -> VesselTree:
    """The same tree after a small random head motion (follow-up study of the same patient)."""
    axis = _unit(rng.normal(size=3))
    angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues
    shift = rng.uniform(-shift_mm, shift_mm, size=3)
    t = tree.tubes

    def move(p: np.ndarray) -> np.ndarray:
        return (p - centre) @ rot.T + centre + shift

    return VesselTree(Tubes(move(t.starts), move(t.ends), t.r0.copy(), t.r1.copy(), t.value.copy()))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([1.0, 0.0, 0.0])


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector perpendicular to ``d``."""
    while True:
        u = np.cross(d, rng.normal(size=3))
        if np.linalg.norm(u) > 1e-6:
            return _unit(u)
