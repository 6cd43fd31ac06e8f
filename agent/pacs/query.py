"""What a PACS query returns, and the site's filters applied to it.

Servers differ in which matching they honour (wildcards, date ranges, several modalities), so the
filter is sent to the server where the protocol allows it *and* re-applied here: a lax server can
only make us fetch less, never more than the site asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch

from agent.config import PacsFilters


@dataclasses.dataclass(frozen=True)
class SeriesRef:
    """One series found on the PACS (identifiers stay on the site; they are never logged)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    study_date: str = ""  # YYYYMMDD or empty


@dataclasses.dataclass(frozen=True)
class InstanceRef:
    """One instance to retrieve."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""


def series_matches(series: SeriesRef, filters: PacsFilters) -> bool:
    """Whether a found series passes the site's filters (applied locally, whatever the server did)."""
    if filters.modalities and series.modality.upper() not in filters.modalities:
        return False
    if filters.series_description is not None and not fnmatch.fnmatchcase(
        series.description.lower(), filters.series_description.lower()
    ):
        return False
    if filters.date_from is not None or filters.date_to is not None:
        date = parse_da(series.study_date)
        if date is None:
            return False  # a date filter cannot vouch for an undated study
        if filters.date_from is not None and date < filters.date_from:
            return False
        if filters.date_to is not None and date > filters.date_to:
            return False
    return True


def parse_da(value: str) -> datetime.date | None:
    """A DICOM DA value (YYYYMMDD) as a date, or None when empty or malformed."""
    text = (value or "").strip()
    try:
        return datetime.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def date_range_value(filters: PacsFilters) -> str | None:
    """The DICOM range matching value for StudyDate (``20200101-20211231``, open ends allowed)."""
    if filters.date_from is None and filters.date_to is None:
        return None
    start = filters.date_from.strftime("%Y%m%d") if filters.date_from else ""
    end = filters.date_to.strftime("%Y%m%d") if filters.date_to else ""
    return f"{start}-{end}"


def server_modality(filters: PacsFilters) -> str | None:
    """A single modality can be matched by the server; several are filtered locally."""
    return next(iter(filters.modalities)) if len(filters.modalities) == 1 else None
