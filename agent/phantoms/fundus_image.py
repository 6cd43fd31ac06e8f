"""Colour fundus photographs with a DR grade, calibrated on a real photograph's colours.

An *eye* (:class:`FundusEye`) is patient-specific and fixed: laterality, optic-disc and fovea
position, and the retinal vessel tree (arteries and veins leaving the disc, the temporal arcades
curving around the macula, side branches). An *image* of that eye (:func:`render_fundus`) adds what
changes between photographs: a small camera shift, DR lesions of the image's grade, illumination
texture, vignetting and noise. Finally each channel is mapped affinely so its mean and standard
deviation inside the field of view match ``skimage.data.retina()``
(:mod:`agent.phantoms.fundus_calibration`).

Geometry is stored in normalised units (fractions of the image edge) so one eye renders at any size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from scipy.special import expit

from agent.phantoms.fundus_calibration import reference_stats
from agent.phantoms.fundus_lesions import Lesion, LesionCounts, count_lesions, draw_lesions
from agent.phantoms.tubes import Tubes, partial_volume, signed_distance

FOV_CENTRE = (0.5, 0.5)
FOV_RADIUS = 0.46
_ARTERY, _VEIN, _NEW_VESSEL = 0.0, 1.0, 2.0
# Fraction of each channel (R, G, B) a vessel absorbs at full coverage.
_VESSEL_DARKENING = {_ARTERY: (0.25, 0.5, 0.45), _VEIN: (0.38, 0.65, 0.6), _NEW_VESSEL: (0.3, 0.55, 0.5)}


@dataclasses.dataclass(frozen=True)
class FundusEye:
    """The fixed anatomy of one eye (normalised coordinates, (y, x))."""

    laterality: str  # "R" or "L"
    disc_centre: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]
    vessels: Tubes  # value: 0 artery, 1 vein
    pigment: tuple[float, float, float]  # multiplicative tint of the background


@dataclasses.dataclass(frozen=True)
class FundusRender:
    """One rendered photograph: (N, N, 3) uint8, its field-of-view mask and lesion ground truth."""

    rgb: np.ndarray
    fov: np.ndarray
    grade: int
    lesions: LesionCounts


def draw_fundus_eye(rng: np.random.Generator, *, laterality: str) -> FundusEye:
    """Draw one eye's anatomy. In a right-eye photograph the disc sits right of the fovea.

    Raises
    ------
    ValueError
        If ``laterality`` is not "R" or "L".
    """
    if laterality not in ("R", "L"):
        raise ValueError(f"laterality must be 'R' or 'L', got {laterality!r}")
    side = 1.0 if laterality == "R" else -1.0
    fovea = (0.5 + rng.normal(0, 0.015), 0.5 - side * rng.uniform(0.0, 0.04))
    disc = (fovea[0] - rng.uniform(0.0, 0.04), fovea[1] + side * rng.uniform(0.2, 0.25))
    disc_radius = float(rng.uniform(0.055, 0.07))
    vessels = _grow_retinal_vessels(rng, disc=disc, fovea=fovea, temporal=-side)
    pigment = tuple(float(v) for v in rng.uniform(0.9, 1.1, size=3))
    return FundusEye(laterality, disc, disc_radius, fovea, vessels, pigment)  # type: ignore[arg-type]


def render_fundus(eye: FundusEye, *, grade: int, size: int, rng: np.random.Generator) -> FundusRender:
    """Photograph ``eye`` at ``size`` x ``size`` pixels with lesions of DR ``grade``.

    Raises
    ------
    ValueError
        If ``grade`` is not 0-4 or ``size`` is below 64.
    """
    if size < 64:
        raise ValueError(f"fundus size must be >= 64 pixels, got {size}")
    # Separate streams for the photograph and the lesions: with the same generator, images of one
    # eye at different grades differ only by their lesions.
    photo_rng, lesion_rng = rng.spawn(2)
    shift = photo_rng.normal(0, 0.008, size=2)  # camera re-positioning between photographs
    lesions = draw_lesions(
        lesion_rng, grade=grade, fov_centre=FOV_CENTRE, fov_radius=FOV_RADIUS,
        disc_centre=_moved(eye.disc_centre, shift), disc_radius=eye.disc_radius, fovea=_moved(eye.fovea, shift),
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = (yy + 0.5) / size, (xx + 0.5) / size

    image = _background(photo_rng, yy, xx, eye, shift, size)
    image = _paint_disc(image, yy, xx, _moved(eye.disc_centre, shift), eye.disc_radius)
    vessels = Tubes(eye.vessels.starts + shift, eye.vessels.ends + shift, eye.vessels.r0, eye.vessels.r1, eye.vessels.value)
    tufts = [_tuft(lesion_rng, lesion) for lesion in lesions if lesion.kind == "neovascular_tufts"]
    image = _paint_vessels(image, Tubes.concatenate([vessels, *tufts]), size)
    for lesion in lesions:
        image = _paint_lesion(image, yy, xx, lesion, size)

    r = np.hypot(yy - FOV_CENTRE[0], xx - FOV_CENTRE[1])
    image *= (1.0 - 0.45 * (r / FOV_RADIUS) ** 3)[..., None]  # vignetting
    image += photo_rng.normal(0, 0.01, size=image.shape)
    inside = np.clip((FOV_RADIUS - r) * size + 0.5, 0.0, 1.0)  # anti-aliased circular field edge
    fov = inside >= 0.5
    rgb = _calibrate(image, core=(FOV_RADIUS - r) * size > 2.0) * inside[..., None]
    return FundusRender(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), fov, grade, count_lesions(lesions))


def _moved(p: tuple[float, float], shift: np.ndarray) -> tuple[float, float]:
    return (float(p[0] + shift[0]), float(p[1] + shift[1]))


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, eye: FundusEye,
                shift: np.ndarray, size: int) -> np.ndarray:
    """Orange-red retina with choroidal texture and a darker macula (float RGB)."""
    base = np.array([0.8, 0.33, 0.22], dtype=np.float32) * np.asarray(eye.pigment, dtype=np.float32)
    coarse = max(8, size // 12)
    texture = ndimage.zoom(rng.normal(size=(coarse, coarse)), size / coarse, order=3)[:size, :size]
    image = base * (1.0 + 0.06 * texture[..., None])
    fy, fx = _moved(eye.fovea, shift)
    d2 = (yy - fy) ** 2 + (xx - fx) ** 2
    macula = 1.0 - 0.22 * np.exp(-d2 / (2 * 0.08**2)) - 0.12 * np.exp(-d2 / (2 * 0.018**2))
    return (image * macula[..., None]).astype(np.float32)


def _paint_disc(image: np.ndarray, yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Bright yellowish optic disc with a paler central cup."""
    d = np.hypot(yy - centre[0], xx - centre[1])
    disc = expit((radius - d) / (0.12 * radius))
    cup = expit((0.45 * radius - d) / (0.1 * radius))
    return image + disc[..., None] * np.array([0.2, 0.32, 0.2]) + cup[..., None] * np.array([0.05, 0.12, 0.1])


def _paint_vessels(image: np.ndarray, tubes: Tubes, size: int) -> np.ndarray:
    px = Tubes(tubes.starts * size, tubes.ends * size, tubes.r0 * size, tubes.r1 * size, tubes.value)
    sd, kind = signed_distance(px, shape=(size, size), spacing=(1.0, 1.0), margin=1.0)
    coverage = partial_volume(sd, edge_width=1.0)
    for value, darkening in _VESSEL_DARKENING.items():
        weight = np.where(kind == value, coverage, 0.0)[..., None]
        image = image * (1.0 - weight * np.asarray(darkening))
    return image


def _paint_lesion(image: np.ndarray, yy: np.ndarray, xx: np.ndarray, lesion: Lesion, size: int) -> np.ndarray:
    """Paint one lesion in place, visiting only its bounding box."""
    if lesion.kind == "neovascular_tufts":
        return image  # drawn with the vessels
    radius = max(lesion.radius, 0.75 / size)  # at least a pixel and a half across
    reach = 3.0 * radius * lesion.aspect
    cy, cx = lesion.centre
    rows = slice(max(0, int((cy - reach) * size)), min(size, int((cy + reach) * size) + 2))
    cols = slice(max(0, int((cx - reach) * size)), min(size, int((cx + reach) * size) + 2))
    dy, dx = yy[rows, cols] - cy, xx[rows, cols] - cx
    # Elliptical distance: blot and flame haemorrhages are elongated along a random direction.
    c, s = np.cos(lesion.angle), np.sin(lesion.angle)
    d = np.hypot((c * dx + s * dy) / lesion.aspect, -s * dx + c * dy)
    box = image[rows, cols]
    if lesion.kind == "cotton_wool_spots":
        profile = np.exp(-((d / radius) ** 2))  # fluffy, soft edged
        box += profile[..., None] * np.array([0.14, 0.2, 0.16], dtype=np.float32)
        return image
    profile = np.clip((radius - d) * size + 0.5, 0.0, 1.0)
    if lesion.kind == "exudates":
        box += profile[..., None] * np.array([0.18, 0.24, 0.0], dtype=np.float32)  # waxy yellow
    else:
        box *= 1.0 - profile[..., None] * np.array([0.4, 0.7, 0.65], dtype=np.float32)  # dark red: MA, haemorrhage
    return image


def _tuft(rng: np.random.Generator, lesion: Lesion) -> Tubes:
    """A tangle of fine new vessels (grade 4) as short random tubes inside the lesion radius."""
    n = int(rng.integers(10, 18))
    c = np.asarray(lesion.centre)
    starts = c + rng.uniform(-lesion.radius, lesion.radius, size=(n, 2))
    ends = starts + rng.normal(0, lesion.radius * 0.5, size=(n, 2))
    r = np.full(n, 0.0025)
    return Tubes(starts, ends, r, r, np.full(n, _NEW_VESSEL))


def _grow_retinal_vessels(rng: np.random.Generator, *, disc: tuple[float, float], fovea: tuple[float, float],
                          temporal: float) -> Tubes:
    """Arteries and veins leaving the disc: temporal arcades bending around the macula, nasal branches."""
    rows: list[tuple[np.ndarray, np.ndarray, float, float, float]] = []
    origin = np.asarray(disc, dtype=np.float64)

    def walk(p: np.ndarray, heading: float, r: float, steps: int, turn: float, kind: float, depth: int) -> None:
        for i in range(steps):
            heading += turn + rng.normal(0, 0.12)
            q = p + 0.02 * np.array([np.sin(heading), np.cos(heading)])
            if np.hypot(q[0] - FOV_CENTRE[0], q[1] - FOV_CENTRE[1]) > FOV_RADIUS * 1.02 or r < 0.0015:
                return
            r_next = r * 0.975
            rows.append((p, q, r, r_next, kind))
            if depth < 2 and i > 1 and rng.random() < 0.22:  # side branch
                side = rng.choice([-1.0, 1.0])
                walk(q, heading + side * rng.uniform(0.6, 1.2), r * 0.6, int(rng.integers(4, 12)), 0.0, kind, depth + 1)
            p, r = q, r_next

    # Headings: 0 = +x (right), pi/2 = +y (down). Temporal arcades leave up/down and curve towards
    # the temporal side; nasal vessels fan out on the other side.
    temporal_heading = 0.0 if temporal > 0 else np.pi
    for vertical in (-1.0, 1.0):
        for kind, radius in ((_VEIN, 0.0075), (_ARTERY, 0.006)):
            jitter = rng.normal(0, 0.15)
            start_heading = vertical * np.pi / 2 + jitter
            turn = -vertical * temporal * rng.uniform(0.06, 0.09)  # curve around the fovea
            walk(origin.copy(), start_heading, radius, int(rng.integers(20, 28)), turn, kind, 0)
            nasal = np.pi - temporal_heading + vertical * rng.uniform(0.3, 0.9)
            walk(origin.copy(), nasal, radius * 0.8, int(rng.integers(10, 16)), 0.0, kind, 0)
    a, b, r0, r1, v = zip(*rows)
    return Tubes(np.array(a), np.array(b), np.array(r0), np.array(r1), np.array(v))


def _calibrate(image: np.ndarray, *, core: np.ndarray) -> np.ndarray:
    """Affine per-channel map so mean and std inside ``core`` match the real reference photo."""
    ref = reference_stats()
    out = np.empty_like(image, dtype=np.float64)
    for ch in range(3):
        values = image[..., ch][core]
        mean, std = float(values.mean()), float(values.std()) or 1.0
        out[..., ch] = (image[..., ch] - mean) / std * ref.std[ch] + ref.mean[ch]
    return out
