"""TOF-MRA-like volumes with exact vessel labels, rendered from a patient's vessel tree.

Contrast follows what a time-of-flight angiogram shows: inflowing blood is bright (dimmer
downstream as spins saturate), static brain tissue is suppressed and mid-grey, the skull is dark,
subcutaneous fat is fairly bright, air is dark. The label is exact: a voxel is vessel when its
centre lies inside the vessel radius; the image sees the vessel with partial volume at the edges.
Multi-slab acquisition makes inflow signal fade from the bottom to the top of each slab (the
"venetian blind" pattern). A smooth multiplicative bias field and Rician noise (magnitude of complex
Gaussian noise) finish the image, with per-site scanner settings (:class:`ScannerProfile`) so sites
are not identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from agent.phantoms.tubes import partial_volume, signed_distance
from agent.phantoms.vessel_tree import Ellipsoid, VesselTree, grow_vessel_tree, move_rigidly

BASE_SIZE = 64
BASE_SPACING_MM = (0.8, 0.6, 0.6)  # (z, y, x) at 64^3; other sizes keep the same field of view
BRAIN_FRACTION = 0.82  # brain ellipsoid = head ellipsoid scaled by this (skull and scalp outside)


@dataclasses.dataclass(frozen=True)
class TofGeometry:
    """Voxel grid of a TOF volume: shape and spacing in (z, y, x)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]

    @classmethod
    def cube(cls, size: int) -> "TofGeometry":
        """``size``^3 voxels over a fixed field of view (spacing scales with 64/size).

        Raises
        ------
        ValueError
            If ``size`` is below 16 voxels (vessels would vanish).
        """
        if size < 16:
            raise ValueError(f"volume size must be >= 16 voxels, got {size}")
        scale = BASE_SIZE / size
        return cls((size, size, size), tuple(round(s * scale, 6) for s in BASE_SPACING_MM))  # type: ignore[arg-type]

    @property
    def fov_mm(self) -> np.ndarray:
        return np.asarray(self.shape, dtype=np.float64) * np.asarray(self.spacing_mm)


@dataclasses.dataclass(frozen=True)
class ScannerProfile:
    """Per-site acquisition settings (intensity scale, noise level, bias-field strength)."""

    intensity_scale: float
    noise_sigma: float
    bias_strength: float
    slab_mm: float  # thickness of one acquisition slab
    slab_saturation: float  # fraction of inflow signal lost from the bottom to the top of a slab

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "ScannerProfile":
        return cls(
            intensity_scale=float(rng.uniform(900.0, 1600.0)),
            noise_sigma=float(rng.uniform(0.02, 0.04)),
            bias_strength=float(rng.uniform(0.08, 0.2)),
            slab_mm=float(rng.uniform(14.0, 22.0)),
            slab_saturation=float(rng.uniform(0.05, 0.15)),
        )


@dataclasses.dataclass(frozen=True)
class TofPatient:
    """What makes a TOF patient: head shape and vessel tree (the biometric)."""

    head: Ellipsoid
    tree: VesselTree


@dataclasses.dataclass(frozen=True)
class TofStudy:
    """One rendered study: uint16 image and uint8 {0,1} label, both (z, y, x)."""

    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]


def draw_tof_patient(rng: np.random.Generator, geometry: TofGeometry) -> TofPatient:
    """Draw a patient's head and vessel tree from the patient's generator."""
    fov = geometry.fov_mm
    centre = np.array([0.42, 0.5, 0.5]) * fov + rng.normal(0, 0.01, size=3) * fov
    semi = np.array([0.62, 0.46, 0.40]) * fov * rng.uniform(0.94, 1.04, size=3)
    head = Ellipsoid(centre, semi)
    brain = Ellipsoid(centre, semi * BRAIN_FRACTION)
    return TofPatient(head, grow_vessel_tree(rng, fov_mm=fov, brain=brain))


def follow_up(patient: TofPatient, rng: np.random.Generator) -> TofPatient:
    """The same patient re-positioned in the scanner (small rigid motion) for a later study."""
    tree = move_rigidly(patient.tree, rng, centre=patient.head.centre, shift_mm=0.3, rotation_deg=1.0)
    # The head follows the mean displacement of the tree (its rotation is negligible for an ellipsoid).
    shift = tree.tubes.starts.mean(axis=0) - patient.tree.tubes.starts.mean(axis=0)
    return TofPatient(Ellipsoid(patient.head.centre + shift, patient.head.semi_axes), tree)


def render_tof_study(patient: TofPatient, geometry: TofGeometry, profile: ScannerProfile,
                     rng: np.random.Generator) -> TofStudy:
    """Render one acquisition of ``patient`` (noise and texture drawn from ``rng``)."""
    spacing = geometry.spacing_mm
    edge = float(np.mean(spacing))
    sd, signal = signed_distance(patient.tree.tubes, shape=geometry.shape, spacing=spacing, margin=edge)
    label = (sd <= 0).astype(np.uint8)
    vessel_fraction = partial_volume(sd, edge_width=edge)

    coords = _grid_mm(geometry)
    r = np.sqrt(sum(((c - patient.head.centre[k]) / patient.head.semi_axes[k]) ** 2 for k, c in enumerate(coords)))
    tissue = _tissue(r, rng, geometry)
    slab_position = np.mod(coords[0], profile.slab_mm) / profile.slab_mm  # 0 at a slab's entry, 1 at its exit
    vessel_signal = np.where(vessel_fraction > 0, signal, 0.0) * (1.0 - profile.slab_saturation * slab_position)
    image = tissue * (1.0 - vessel_fraction) + vessel_signal * vessel_fraction
    image = image * _bias_field(coords, geometry.fov_mm, profile.bias_strength, rng)
    n1 = rng.normal(0.0, profile.noise_sigma, size=image.shape)
    n2 = rng.normal(0.0, profile.noise_sigma, size=image.shape)
    image = np.sqrt((image + n1) ** 2 + n2**2)  # Rician: magnitude of a noisy complex signal
    scaled = np.clip(np.rint(image * profile.intensity_scale), 0, 65535).astype(np.uint16)
    return TofStudy(scaled, label, spacing)


def _grid_mm(geometry: TofGeometry) -> list[np.ndarray]:
    """Broadcastable voxel-centre coordinates (mm) per axis."""
    return [
        (np.arange(n) * s).reshape([-1 if j == k else 1 for j in range(3)])
        for k, (n, s) in enumerate(zip(geometry.shape, geometry.spacing_mm))
    ]


def _ramp(x: np.ndarray, at: float, width: float) -> np.ndarray:
    """0 below ``at - width/2``, 1 above ``at + width/2``, linear between (anti-aliased boundary)."""
    return np.clip((x - at) / width + 0.5, 0.0, 1.0)


def _tissue(r: np.ndarray, rng: np.random.Generator, geometry: TofGeometry) -> np.ndarray:
    """Static tissue by normalised head radius: brain, dark skull, bright fat, air."""
    width = 1.5 / min(geometry.shape)  # about one voxel in normalised radius
    texture_shape = tuple(max(4, n // 4) for n in geometry.shape)
    texture = ndimage.gaussian_filter(rng.normal(size=texture_shape), sigma=1.0)
    texture = ndimage.zoom(texture / (texture.std() + 1e-9), [n / t for n, t in zip(geometry.shape, texture_shape)], order=1)
    brain = 0.27 + 0.025 * texture[: geometry.shape[0], : geometry.shape[1], : geometry.shape[2]]
    in_skull = _ramp(r, BRAIN_FRACTION + 0.01, width)
    in_fat = _ramp(r, 0.93, width)
    outside = _ramp(r, 1.0, width)
    tissue = brain * (1 - in_skull) + 0.06 * (in_skull - in_fat) + 0.55 * (in_fat - outside)
    return tissue.astype(np.float32)


def _bias_field(coords: list[np.ndarray], fov: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(linear + quadratic terms), about +-strength over the volume."""
    u = [c / f - 0.5 for c, f in zip(coords, fov)]
    terms = u + [a * b for i, a in enumerate(u) for b in u[i:]]
    log_field = sum(rng.normal(0, 1) * t for t in terms)
    log_field = log_field - np.mean(log_field)
    span = float(np.max(np.abs(log_field))) or 1.0
    return np.exp(strength * log_field / span).astype(np.float32)
