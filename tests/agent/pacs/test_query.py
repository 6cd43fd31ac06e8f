"""The site's filters, applied locally to whatever the server returned."""

from __future__ import annotations

import datetime

import pytest

from agent.config import PacsFilters
from agent.pacs.query import SeriesRef, date_range_value, parse_da, series_matches, server_modality

TOF = SeriesRef("1.2", "1.2.3", modality="MR", description="TOF 3D multi-slab", study_date="20210315")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (PacsFilters(), True),
        (PacsFilters(modalities=frozenset({"MR"})), True),
        (PacsFilters(modalities=frozenset({"CT", "OP"})), False),
        (PacsFilters(series_description="*tof*"), True),
        (PacsFilters(series_description="T1*"), False),
        (PacsFilters(date_from=datetime.date(2021, 3, 15)), True),
        (PacsFilters(date_from=datetime.date(2021, 3, 16)), False),
        (PacsFilters(date_to=datetime.date(2021, 3, 14)), False),
    ],
)
def test_series_matches(filters: PacsFilters, expected: bool) -> None:
    assert series_matches(TOF, filters) is expected


def test_undated_study_fails_a_date_filter() -> None:
    undated = SeriesRef("1", "2", modality="MR", study_date="")
    assert not series_matches(undated, PacsFilters(date_from=datetime.date(2000, 1, 1)))
    assert series_matches(undated, PacsFilters())
    assert parse_da("2021") is None and parse_da("20210230") is None


def test_server_side_values() -> None:
    f = PacsFilters(modalities=frozenset({"MR"}), date_from=datetime.date(2020, 1, 1))
    assert server_modality(f) == "MR" and date_range_value(f) == "20200101-"
    assert server_modality(PacsFilters(modalities=frozenset({"MR", "OP"}))) is None  # filtered locally
    assert date_range_value(PacsFilters()) is None
