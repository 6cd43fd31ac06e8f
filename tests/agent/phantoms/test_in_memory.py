"""In-memory phantom records used by other areas' tests."""

from __future__ import annotations

import numpy as np

from agent.records import FundusImage, LabeledVolume


def test_tiny_volumes_are_labeled_volumes_of_three_patients(tiny_volumes: list[LabeledVolume]) -> None:
    assert [v.patient_key for v in tiny_volumes] == ["tiny-p0", "tiny-p1", "tiny-p1", "tiny-p2"]
    for v in tiny_volumes:
        assert v.image.dtype == np.float32 and v.label.dtype == np.uint8 and v.image.shape == (32, 32, 32)
        assert v.label.any() and v.spacing_mm == (1.6, 1.2, 1.2)


def test_tiny_fundus_images_have_grades_and_patients(tiny_fundus: list[FundusImage]) -> None:
    assert len(tiny_fundus) == 12 and len({f.patient_key for f in tiny_fundus}) == 10
    assert {f.grade for f in tiny_fundus} == set(range(5))
    assert all(f.rgb.shape == (128, 128, 3) for f in tiny_fundus)
