"""Export the store as a plain dataset folder other tools can read without anonfed.

Layout::

    DEST/manifest.csv                      one row per output: site, round, method, guarantee, ...
    DEST/README.txt                        what the data are (synthetic) and their privacy guarantee
    DEST/<site>/<run>-r<round>-<sha12>/pairs.npz    image (n,S,S) in [-1,1], label (n,S,S) in {0,1}
    DEST/<site>/<run>-r<round>-<sha12>/png/000_image.png, 000_label.png, ...
    DEST/<site>/<run>-r<round>-<sha12>/images.npz + png/000.png   k-anonymous RGB averages
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from coordinator.store.outputs import SyntheticStore

log = logging.getLogger(__name__)

_README = """Synthetic image+label pairs collected by the anonfed coordinator.

Every file here is SYNTHETIC: sampled from generative models trained at the sites. No real image
left a site. The guarantee of each output (differential privacy epsilon/delta and unit, as reported
by the site that made it) is in manifest.csv; outputs labelled with an infinite epsilon have no
privacy guarantee. Each folder name ends with the first 12 hex digits of the sha256 of the
canonical .npy bytes stored by the coordinator (see the ledger for signed hashes).
"""


def export_dataset(store: SyntheticStore, dest: Path, *, png: bool = True) -> Path:
    """Write every stored output under ``dest`` (created); returns the manifest path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "README.txt").write_text(_README, encoding="utf-8")
    manifest = dest / "manifest.csv"
    fields = [f.name for f in dataclasses.fields(store.entries()[0])] + ["folder"] if store.entries() else ["folder"]
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for entry, samples in store.iter_samples():
            folder = dest / entry.site / f"{entry.run_id}-r{entry.round}-{entry.sha256[:12]}"
            folder.mkdir(parents=True, exist_ok=True)
            if samples.dtype == np.uint8:  # k-anonymous RGB averages
                np.savez_compressed(folder / "images.npz", images=samples)
                if png:
                    (folder / "png").mkdir(parents=True, exist_ok=True)
                    for i, rgb in enumerate(samples):
                        Image.fromarray(rgb).save(folder / "png" / f"{i:03d}.png")
            else:
                np.savez_compressed(folder / "pairs.npz", image=samples[:, 0], label=samples[:, 1].astype(np.uint8))
                if png:
                    _write_pngs(folder / "png", samples)
            writer.writerow(list(dataclasses.astuple(entry)) + [str(folder.relative_to(dest))])
    log.info("exported %d synthetic output(s) to %s", len(store.entries()), dest)
    return manifest


def _write_pngs(folder: Path, samples: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(samples):
        image = np.clip((pair[0] + 1.0) * 127.5, 0, 255).astype(np.uint8)
        label = (pair[1] > 0.5).astype(np.uint8) * 255
        Image.fromarray(image).save(folder / f"{i:03d}_image.png")
        Image.fromarray(label).save(folder / f"{i:03d}_label.png")
