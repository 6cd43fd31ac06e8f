"""Head mask from the image: covers the brain, excludes air, tolerates noise."""

from __future__ import annotations

import numpy as np
import pytest

from agent.patching.head_mask import head_mask
from agent.phantoms.seeding import Stream, rng_for
from agent.phantoms.tof_volume import BRAIN_FRACTION, ScannerProfile, TofGeometry, draw_tof_patient, render_tof_study


def test_mask_matches_the_phantom_brain() -> None:
    geometry = TofGeometry.cube(48)
    patient = draw_tof_patient(rng_for(2, Stream.TOF, 0, 0, 0), geometry)
    study = render_tof_study(patient, geometry, ScannerProfile.draw(rng_for(2, Stream.SITE, 0)), rng_for(2, Stream.TOF, 0, 0, 1))
    mask = head_mask(study.image)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(geometry.shape, geometry.spacing_mm)], indexing="ij"), axis=-1)
    r = patient.head.normalized_radius(grid)
    inner_brain = r < BRAIN_FRACTION * 0.9
    outside_head = r > 1.05
    assert mask[inner_brain].mean() > 0.98
    assert mask[outside_head].mean() < 0.01
    assert mask[study.label == 1].mean() > 0.9, "vessels lie inside the mask"


def test_mask_of_a_2d_disc() -> None:
    yy, xx = np.mgrid[0:40, 0:40]
    image = np.where(np.hypot(yy - 20, xx - 20) < 12, 100.0, 0.0) + np.random.default_rng(0).normal(0, 3, (40, 40))
    image[20, 20] = 0.0  # a hole inside is filled
    mask = head_mask(image)
    assert mask[20, 20] and not mask[0, 0]
    assert abs(mask.sum() - np.pi * 144) < 0.1 * np.pi * 144


def test_constant_or_wrong_rank_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="constant"):
        head_mask(np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        head_mask(np.zeros(8))
