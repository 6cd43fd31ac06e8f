"""One call for a site's synthetic release: write it as DICOM under the site's outputs, then push
it to every PACS destination the site configured (``destination:`` of a PACS source).

The site service calls this after a release passed the egress guard; a push failure is reported,
not hidden, and never undoes the release (the files stay in ``<state_dir>/outputs/dicom/``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from agent.config import SiteConfig
from agent.export.fundus_dicom import FundusIod, write_fundus_images
from agent.export.synthetic_marking import SyntheticProvenance
from agent.export.tof_dicom import write_tof_pairs
from agent.pacs.push import PushReport, push_to_site_destinations
from protocols.errors import AnonfedError, BadInputError

log = logging.getLogger(__name__)

_RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class ReleaseExport:
    """Where a release was written and what the pushes did."""

    folder: Path
    files: tuple[Path, ...]
    pushed: tuple[PushReport, ...]
    push_error: str | None = None


def export_release(
    cfg: SiteConfig,
    *,
    release_id: str,
    provenance: SyntheticProvenance,
    tof_pairs: np.ndarray | None = None,
    fundus_images: np.ndarray | None = None,
    fundus_laterality: Sequence[str] | str = "B",
    fundus_iod: FundusIod = FundusIod.OP,
    push: bool = True,
) -> ReleaseExport:
    """Write TOF pairs and/or fundus images of one release as DICOM and push them if configured.

    Raises
    ------
    BadInputError
        If ``release_id`` is not a plain name, nothing is given to export, or the arrays are invalid.
    """
    if not _RELEASE_ID.match(release_id):
        raise BadInputError(f"release_id: expected 1-128 letters, digits, '.', '_' or '-', got {release_id!r}")
    if tof_pairs is None and fundus_images is None:
        raise BadInputError("export_release: give tof_pairs and/or fundus_images; there is nothing to export")
    folder = cfg.state.outputs / "dicom" / release_id
    files: list[Path] = []
    if tof_pairs is not None:
        files += write_tof_pairs(tof_pairs, folder / "tof", provenance=provenance).files
    if fundus_images is not None:
        files += write_fundus_images(
            fundus_images, folder / "fundus", provenance=provenance, laterality=fundus_laterality, iod=fundus_iod
        ).files
    pushed: tuple[PushReport, ...] = ()
    error = None
    if push:
        try:
            pushed = tuple(push_to_site_destinations(cfg, files))
        except AnonfedError as exc:
            # The release itself stands; the operator re-pushes with `anonfed export-dicom --push`.
            error = str(exc)
            log.warning("synthetic release %s written but not pushed: %s", release_id, exc)
    return ReleaseExport(folder, tuple(files), pushed, error)
