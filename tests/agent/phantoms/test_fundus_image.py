"""Fundus phantoms: real-photo colour statistics, lesions by grade, anatomy by laterality."""

from __future__ import annotations

import numpy as np
import pytest

from agent.phantoms.fundus_calibration import colour_stats, fov_mask, reference_stats
from agent.phantoms.fundus_image import draw_fundus_eye, render_fundus
from agent.phantoms.fundus_lesions import COUNT_RANGES, draw_lesions
from agent.phantoms.seeding import Stream, rng_for

# Stated tolerance: per-channel mean within 4 grey levels and std within 12 % of the real photo.
MEAN_TOLERANCE = 4.0
STD_TOLERANCE = 0.12


def _render(patient: int, *, grade: int, size: int = 128, laterality: str = "R", image: int = 0):
    eye = draw_fundus_eye(rng_for(5, Stream.FUNDUS, 0, patient, 1), laterality=laterality)
    return render_fundus(eye, grade=grade, size=size, rng=rng_for(5, Stream.FUNDUS, 0, patient, 10 + image))


@pytest.mark.parametrize(("size", "grade"), [(128, 0), (192, 2), (256, 4)])
def test_colour_statistics_match_the_real_retina_photo(size: int, grade: int) -> None:
    ref = reference_stats()
    render = _render(size, grade=grade, size=size)
    stats = colour_stats(render.rgb, fov_mask(render.rgb))
    for ch in range(3):
        assert abs(stats.mean[ch] - ref.mean[ch]) <= MEAN_TOLERANCE, (ch, stats.mean, ref.mean)
        assert abs(stats.std[ch] / ref.std[ch] - 1.0) <= STD_TOLERANCE, (ch, stats.std, ref.std)


def test_field_of_view_is_a_dark_bordered_disc() -> None:
    render = _render(1, grade=0, size=160)
    assert render.rgb.shape == (160, 160, 3) and render.rgb.dtype == np.uint8
    assert render.rgb[:4, :4].max() == 0 and render.rgb[-4:, -4:].max() == 0
    area = render.fov.mean()
    assert area == pytest.approx(np.pi * 0.46**2, rel=0.03)


def test_lesion_counts_follow_the_grade() -> None:
    fov = dict(fov_centre=(0.5, 0.5), fov_radius=0.46, disc_centre=(0.5, 0.72), disc_radius=0.06, fovea=(0.5, 0.5))
    rng = np.random.default_rng(0)
    totals = []
    for grade in range(5):
        counts = [draw_lesions(rng, grade=grade, **fov) for _ in range(40)]
        kinds = {lesion.kind for lesions in counts for lesion in lesions}
        totals.append(np.mean([len(lesions) for lesions in counts]))
        first_grade = {kind: next(g for g, (_, high) in enumerate(ranges) if high > 0) for kind, ranges in COUNT_RANGES.items()}
        assert kinds == {kind for kind, g in first_grade.items() if g <= grade}
    assert totals[0] == 0
    assert all(a < b for a, b in zip(totals, totals[1:])), totals


def test_lesions_change_more_pixels_at_higher_grades() -> None:
    # Same eye and same image generator: only the lesions differ between grades.
    base = _render(2, grade=0).rgb.astype(int)
    changed = [float((np.abs(_render(2, grade=g).rgb.astype(int) - base).sum(axis=-1) > 30).mean()) for g in range(5)]
    assert changed[0] == 0.0
    assert changed[1] > 0
    assert changed[4] > changed[2] > changed[1], changed


def test_optic_disc_side_follows_laterality() -> None:
    for laterality, sign in (("R", 1), ("L", -1)):
        eye = draw_fundus_eye(rng_for(5, Stream.FUNDUS, 0, 3, 1), laterality=laterality)
        assert sign * (eye.disc_centre[1] - eye.fovea[1]) > 0.15
        # The disc is the brightest region of the green channel.
        render = render_fundus(eye, grade=0, size=128, rng=rng_for(5, Stream.FUNDUS, 0, 3, 10))
        green = render.rgb[..., 1].astype(float)
        y, x = np.unravel_index(np.argmax(np.where(render.fov, green, 0)), green.shape)
        assert abs(x / 128 - eye.disc_centre[1]) < 0.1


def test_eyes_differ_between_patients_and_rendering_is_deterministic() -> None:
    assert np.array_equal(_render(4, grade=1).rgb, _render(4, grade=1).rgb)
    a = draw_fundus_eye(rng_for(5, Stream.FUNDUS, 0, 4, 1), laterality="R")
    b = draw_fundus_eye(rng_for(5, Stream.FUNDUS, 0, 6, 1), laterality="R")
    assert a.vessels.count != b.vessels.count or not np.allclose(a.vessels.ends, b.vessels.ends)


def test_bad_arguments_are_rejected() -> None:
    eye = draw_fundus_eye(rng_for(5, Stream.FUNDUS, 0, 0, 1), laterality="R")
    with pytest.raises(ValueError, match="grade must be 0-4"):
        render_fundus(eye, grade=5, size=128, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=">= 64"):
        render_fundus(eye, grade=0, size=32, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="laterality"):
        draw_fundus_eye(np.random.default_rng(0), laterality="X")
