"""Diabetic-retinopathy lesions whose kinds and counts follow the DR grade (0-4).

Roughly the international clinical DR scale: grade 1 shows only microaneurysms; grade 2 adds dot and
blot haemorrhages and hard exudates; grade 3 has many more of each plus cotton-wool spots; grade 4
adds neovascular tufts (fine tangled new vessels near the optic disc). Counts are drawn from ranges
per grade, so they increase with the grade on average and never appear below their first grade.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# (low, high) inclusive count range per grade 0..4, per lesion kind.
COUNT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "microaneurysms": ((0, 0), (2, 5), (5, 10), (10, 18), (12, 22)),
    "haemorrhages": ((0, 0), (0, 0), (2, 5), (6, 12), (8, 16)),
    "exudates": ((0, 0), (0, 0), (2, 6), (6, 14), (8, 18)),
    "cotton_wool_spots": ((0, 0), (0, 0), (0, 0), (1, 3), (2, 4)),
    "neovascular_tufts": ((0, 0), (0, 0), (0, 0), (0, 0), (1, 2)),
}


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One lesion in normalised image coordinates (fraction of the image edge)."""

    kind: str
    centre: tuple[float, float]  # (y, x)
    radius: float  # along the short axis
    aspect: float = 1.0  # long / short axis (haemorrhages are blots or flames, the rest round)
    angle: float = 0.0  # direction of the long axis, radians


@dataclasses.dataclass(frozen=True)
class LesionCounts:
    """How many lesions of each kind an image received (ground truth for tests and reports)."""

    microaneurysms: int
    haemorrhages: int
    exudates: int
    cotton_wool_spots: int
    neovascular_tufts: int

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


def draw_lesions(
    rng: np.random.Generator,
    *,
    grade: int,
    fov_centre: tuple[float, float],
    fov_radius: float,
    disc_centre: tuple[float, float],
    disc_radius: float,
    fovea: tuple[float, float],
) -> list[Lesion]:
    """Lesions for one image of the given grade (positions avoid the optic disc).

    Raises
    ------
    ValueError
        If ``grade`` is not 0-4.
    """
    if grade not in range(5):
        raise ValueError(f"DR grade must be 0-4, got {grade}")
    lesions: list[Lesion] = []
    radii = {
        "microaneurysms": (0.004, 0.007),
        "haemorrhages": (0.01, 0.025),
        "exudates": (0.004, 0.01),
        "cotton_wool_spots": (0.02, 0.032),
        "neovascular_tufts": (0.03, 0.045),
    }
    for kind, ranges in COUNT_RANGES.items():
        low, high = ranges[grade]
        for _ in range(int(rng.integers(low, high + 1))):
            if kind == "neovascular_tufts":
                centre = _near(rng, disc_centre, disc_radius * 1.2, disc_radius * 3.0)
            elif kind == "exudates" and rng.random() < 0.7:
                centre = _near(rng, fovea, 0.03, 0.2)  # hard exudates gather around the macula
            else:
                centre = _inside_fov(rng, fov_centre, fov_radius * 0.85, disc_centre, disc_radius * 1.5)
            radius = float(rng.uniform(*radii[kind]))
            if kind == "haemorrhages":
                lesions.append(Lesion(kind, centre, radius, float(rng.uniform(1.0, 2.5)), float(rng.uniform(0, np.pi))))
            else:
                lesions.append(Lesion(kind, centre, radius))
    return lesions


def count_lesions(lesions: list[Lesion]) -> LesionCounts:
    """Tally lesions by kind."""
    kinds = [lesion.kind for lesion in lesions]
    return LesionCounts(**{name: kinds.count(name) for name in COUNT_RANGES})


def _near(rng: np.random.Generator, centre: tuple[float, float], r_min: float, r_max: float) -> tuple[float, float]:
    angle = rng.uniform(0, 2 * np.pi)
    r = rng.uniform(r_min, r_max)
    return (centre[0] + r * np.sin(angle), centre[1] + r * np.cos(angle))


def _inside_fov(rng: np.random.Generator, fov_centre: tuple[float, float], radius: float,
                disc_centre: tuple[float, float], keep_away: float) -> tuple[float, float]:
    for _ in range(100):
        y, x = rng.uniform(-radius, radius, size=2)
        p = (fov_centre[0] + y, fov_centre[1] + x)
        if y * y + x * x <= radius * radius and np.hypot(p[0] - disc_centre[0], p[1] - disc_centre[1]) > keep_away:
            return p
    return fov_centre  # practically unreachable: the disc covers a small part of the field
