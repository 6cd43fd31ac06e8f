"""Demo only: fill one site's Orthanc with that site's phantom studies (compose service *-seed).

Generates the phantom consortium, then STOW-RS uploads the DICOM files of site SITE_INDEX to
PACS_URL. This stands in for a hospital's clinical PACS; it is not part of the agent (the agent
only ever pushes synthetic objects, and refuses anything else).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from agent.config import PacsEndpoint, PacsKind
from agent.pacs.dicomweb import DicomWebClient
from agent.phantoms.consortium import ConsortiumSpec, write_consortium


def main() -> int:
    url = os.environ["PACS_URL"]
    site_index = int(os.environ.get("SITE_INDEX", "0"))
    endpoint = PacsEndpoint(PacsKind.DICOMWEB, url=url, username="anonfed", password_env="PACS_PASSWORD")
    with tempfile.TemporaryDirectory() as tmp:
        summary = write_consortium(Path(tmp), ConsortiumSpec(sites=site_index + 1, seed=0, tof_patients=4, fundus_patients=8))
        site = summary.sites[site_index].site_id
        files = sorted((Path(tmp) / site).rglob("*.dcm"))
        client = DicomWebClient(endpoint)
        for start in range(0, len(files), 50):
            client.store(p.read_bytes() for p in files[start : start + 50])
    print(f"loaded {len(files)} phantom DICOM files of {site} into {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
