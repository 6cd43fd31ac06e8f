"""Pushing synthetic DICOM outputs to a PACS destination (STOW-RS or C-STORE).

Only files anonfed wrote itself are pushed, and each is checked first: a file that is not marked
Patient Identity Removed = YES with an anonfed de-identification method is refused. This is the
one path by which DICOM leaves the agent for the hospital's own PACS, so it must never carry a
real image by mistake.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

import pydicom

from agent.config import PacsEndpoint, PacsKind, PacsSource, SiteConfig
from protocols.errors import EgressBlockedError

log = logging.getLogger(__name__)

STOW_BATCH = 50  # instances per STOW-RS request


@dataclasses.dataclass(frozen=True)
class PushReport:
    destination: str
    sent: int


def check_synthetic(path: Path) -> None:
    """Refuse anything that is not a synthetic object written by anonfed.

    Raises
    ------
    EgressBlockedError
        If the file lacks the synthetic markers (Patient Identity Removed YES and an anonfed
        de-identification method).
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientIdentityRemoved", "DeidentificationMethod"])
    methods = ds.get("DeidentificationMethod", "")
    methods = [methods] if isinstance(methods, str) else list(methods)
    if ds.get("PatientIdentityRemoved") != "YES" or not any("anonfed" in str(m) for m in methods):
        raise EgressBlockedError(
            f"{path.name}: not a synthetic object written by anonfed (expected Patient Identity Removed = YES "
            "and an anonfed De-identification Method); only synthetic outputs may be pushed to a PACS"
        )


def push_files(paths: Iterable[Path], endpoint: PacsEndpoint) -> PushReport:
    """Send synthetic DICOM files to one destination.

    Raises
    ------
    EgressBlockedError
        If any file is not an anonfed synthetic object (nothing is sent then).
    AuthenticationError, TransportError
        If the destination refuses or cannot be reached.
    """
    files = [Path(p) for p in paths]
    for path in files:
        check_synthetic(path)
    from agent.pacs.sync import make_client

    client = make_client(endpoint)
    try:
        if endpoint.kind is PacsKind.DICOMWEB:
            sent = 0
            for start in range(0, len(files), STOW_BATCH):
                sent += client.store(p.read_bytes() for p in files[start : start + STOW_BATCH])
        else:
            sent = client.store(pydicom.dcmread(p) for p in files)
    finally:
        if hasattr(client, "close"):
            client.close()
    log.info("pushed %d synthetic instance(s) to %s", sent, endpoint.describe())
    return PushReport(endpoint.describe(), sent)


def push_to_site_destinations(cfg: SiteConfig, paths: Iterable[Path]) -> list[PushReport]:
    """Push to every destination configured in the site's PACS sources (``destination:``)."""
    files = list(paths)
    reports = []
    for source in cfg.sources:
        if isinstance(source, PacsSource) and source.destination is not None:
            reports.append(push_files(files, source.destination))
    return reports
