"""``anonfed phantoms``: write a whole phantom consortium, one folder and one config per site.

Layout under ``OUT``::

    OUT/phantoms.json                    manifest (spec + written files); marks a complete output
    OUT/<site_id>/tof/dicom/study-NNN/   mr/slice-KKKK.dcm (MR series) + seg/vessels.dcm (SEG)
    OUT/<site_id>/tof/nifti/             <PatientID>_<study>_tof.nii.gz + ..._tof_label.nii.gz
    OUT/<site_id>/fundus/dicom/          image-NNN.dcm (Ophthalmic Photography, Modality OP)
    OUT/<site_id>/fundus/png/            <PatientID>_<eye>_v<visit>.png
    OUT/<site_id>/fundus/grades.csv      file,grade,patient for every fundus image
    OUT/configs/<site_id>.yaml           site config for agent.config.load_site_config
    OUT/state/<site_id>/                 (created later by the agent: the configs' state_dir)

Same spec, same bytes of pixel data. A non-empty ``OUT`` is refused unless it holds a previous
phantom output of the same spec: a complete one is reused as is (its files are checked by size), an
interrupted one (manifest still marked incomplete) is generated again over itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from tqdm import tqdm

from protocols.atomic_files import write_text_atomic
from agent.phantoms.seeding import site_id_for
from agent.phantoms.site_plan import planned_items
from agent.phantoms.site_writer import SiteSummary, Timings, write_site
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "phantoms.json"
GENERATOR_VERSION = 1  # bump when the same spec would render different pixels
MAX_SITES = 26 * 27


@dataclasses.dataclass(frozen=True)
class ConsortiumSpec:
    """Everything that determines the phantom output (same spec -> same pixel data).

    Raises
    ------
    BadInputError
        If a number is out of its range (named in the message).
    """

    sites: int = 3
    seed: int = 0
    tof_patients: int = 6
    fundus_patients: int = 12
    volume_size: int = 64
    fundus_size: int = 192

    def __post_init__(self) -> None:
        limits = {
            "sites": (1, MAX_SITES),
            "seed": (0, 2**63 - 1),
            "tof_patients": (1, 10_000),
            "fundus_patients": (1, 10_000),
            "volume_size": (16, 256),
            "fundus_size": (64, 2048),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise BadInputError(f"phantom spec: {name} must be an integer in [{low}, {high}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class ConsortiumSummary:
    """Where the consortium was written and what it contains."""

    root: Path
    spec: ConsortiumSpec
    sites: tuple[SiteSummary, ...]
    reused: bool = False
    tof_seconds_per_volume: float | None = None
    fundus_seconds_per_image: float | None = None

    @property
    def site_ids(self) -> tuple[str, ...]:
        return tuple(s.site_id for s in self.sites)

    def site_dir(self, site_id: str) -> Path:
        """The folder holding one site's images (its config's source)."""
        self._check(site_id)
        return self.root / site_id

    def config_path(self, site_id: str) -> Path:
        """The site's ready-to-use YAML config."""
        self._check(site_id)
        return self.root / "configs" / f"{site_id}.yaml"

    def site(self, site_id: str) -> SiteSummary:
        self._check(site_id)
        return self.sites[self.site_ids.index(site_id)]

    def describe(self) -> str:
        """Human-readable summary (counts, paths and timings; no patient identifiers)."""
        s = self.spec
        head = "reused existing phantom consortium" if self.reused else "wrote phantom consortium"
        lines = [
            f"{head} at {self.root} (seed {s.seed}, TOF {s.volume_size}^3 voxels, fundus {s.fundus_size} px)",
        ]
        for site in self.sites:
            lines.append(
                f"  {site.site_id}: {len(site.tof_patient_ids)} TOF patients "
                f"({site.tof_dicom_studies} DICOM + {site.tof_nifti_studies} NIfTI studies), "
                f"{len(site.fundus_patient_ids)} fundus patients ({site.fundus_dicom_images} OP + "
                f"{site.fundus_png_images} PNG images, grades 0-4: {list(site.grade_counts)}); "
                f"config {self.config_path(site.site_id)}"
            )
        if self.tof_seconds_per_volume is not None and self.fundus_seconds_per_image is not None:
            lines.append(
                f"generation: {self.tof_seconds_per_volume:.3f} s per TOF volume, "
                f"{self.fundus_seconds_per_image:.3f} s per fundus image (rendering only)"
            )
        return "\n".join(lines)

    def _check(self, site_id: str) -> None:
        if site_id not in self.site_ids:
            raise BadInputError(f"unknown phantom site {site_id!r}; this consortium has {list(self.site_ids)}")


def write_consortium(out: Path, spec: ConsortiumSpec, *, progress: bool | None = None) -> ConsortiumSummary:
    """Generate every site of ``spec`` under ``out`` and write one config per site.

    Parameters
    ----------
    out
        Output folder; created if missing. Must be empty or hold a phantom output of the same spec.
    spec
        What to generate.
    progress
        Show a progress bar (default: only on a terminal).

    Raises
    ------
    BadInputError
        If ``out`` is a file, or a non-empty folder that is not a phantom output of this spec.
    """
    out = Path(out)
    previous = _previous_output(out, spec)
    if previous is not None:
        log.info("phantom output of the same spec already present; reusing it")
        return previous
    out.mkdir(parents=True, exist_ok=True)
    # Claim the folder first: an interrupted run leaves an incomplete manifest of this spec, which
    # lets the next run with the same spec overwrite it and makes any other spec refuse it.
    _write_manifest(out, spec, sites=(), complete=False)
    timings = Timings()
    total = spec.sites * planned_items(spec.tof_patients, spec.fundus_patients)
    sites = []
    with tqdm(total=total, desc="phantoms", unit="item", disable=None if progress is None else not progress) as bar:
        for index in range(spec.sites):
            site_id = site_id_for(index)
            sites.append(write_site(
                out, seed=spec.seed, site_index=index, site_id=site_id, tof_patients=spec.tof_patients,
                fundus_patients=spec.fundus_patients, volume_size=spec.volume_size, fundus_size=spec.fundus_size,
                timings=timings, tick=bar.update,
            ))
            _write_site_config(out, site_id)
    summary = ConsortiumSummary(
        out, spec, tuple(sites),
        tof_seconds_per_volume=timings.tof_seconds / max(1, timings.tof_volumes),
        fundus_seconds_per_image=timings.fundus_seconds / max(1, timings.fundus_images),
    )
    _write_manifest(out, spec, sites=summary.sites, complete=True)  # last: marks a complete output
    return summary


def _write_site_config(out: Path, site_id: str) -> None:
    # Relative paths (resolved against the YAML's folder) keep the output relocatable.
    text = "\n".join([
        "# Phantom site config written by `anonfed phantoms`; paths are relative to this file.",
        f"site_id: {site_id}",
        "sources:",
        f"  - path: ../{site_id}",
        f"    fundus_grades_csv: ../{site_id}/fundus/grades.csv",
        f"state_dir: ../state/{site_id}",
        "privacy:",
        "  max_epsilon: 8.0",
        "  delta: 1.0e-5",
        "  unit: patient",
        "  min_k: 5",
        "  accepted_tasks: [dpgan, stylegan-dp, synthesize, ksalsa]",
        "",
    ])
    write_text_atomic(out / "configs" / f"{site_id}.yaml", text)


def _write_manifest(out: Path, spec: ConsortiumSpec, *, sites: tuple[SiteSummary, ...], complete: bool) -> None:
    site_ids = [s.site_id for s in sites]
    files = sorted(p for site in site_ids for p in (out / site).rglob("*") if p.is_file())
    files += [out / "configs" / f"{site}.yaml" for site in site_ids]
    manifest = {
        "generator": "anonfed-phantoms",
        "version": GENERATOR_VERSION,
        "complete": complete,
        "spec": dataclasses.asdict(spec),
        "sites": [s.to_json() for s in sites],
        "files": {p.relative_to(out).as_posix(): p.stat().st_size for p in files},
    }
    write_text_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _previous_output(out: Path, spec: ConsortiumSpec) -> ConsortiumSummary | None:
    """The summary of a complete previous output of ``spec`` in ``out``; None if there is nothing
    to reuse (``out`` missing or empty, or an interrupted run of the same spec).

    Raises
    ------
    BadInputError
        If ``out`` holds anything else.
    """
    if out.exists() and not out.is_dir():
        raise BadInputError(f"phantom output {out} is a file; expected a folder (give --out a new folder)")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BadInputError(
            f"phantom output folder {out} is not empty and holds no {MANIFEST_NAME}; refusing to write into it "
            "(give --out a new or empty folder)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        previous_spec = ConsortiumSpec(**manifest["spec"])
        version = manifest["version"]
        sites = tuple(SiteSummary.from_json(s) for s in manifest["sites"])
        files = dict(manifest["files"])
        complete = bool(manifest["complete"])
    except (OSError, ValueError, KeyError, TypeError, BadInputError) as exc:
        raise BadInputError(f"{manifest_path} is unreadable ({exc}); delete the folder or use another --out") from exc
    if previous_spec != spec or version != GENERATOR_VERSION:
        raise BadInputError(
            f"{out} holds phantoms of a different spec ({previous_spec}, generator v{version}); expected "
            f"{spec} (generator v{GENERATOR_VERSION}). Use another --out or delete the folder first"
        )
    if not complete:
        log.warning("previous phantom run of the same spec was interrupted; generating it again")
        return None
    damaged = [rel for rel, size in files.items() if not (out / rel).is_file() or (out / rel).stat().st_size != size]
    if damaged:
        raise BadInputError(
            f"{out} holds an incomplete phantom output ({len(damaged)} file(s) missing or changed, e.g. "
            f"{damaged[0]}); delete the folder and run again"
        )
    return ConsortiumSummary(out, spec, sites, reused=True)
