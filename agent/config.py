"""The site configuration: one YAML file, validated into frozen dataclasses.

Every message names the offending key (``privacy.max_epsilon``) and says what is wrong. Relative
paths are resolved against the folder holding the YAML file. Relaxing a privacy setting beyond the
recommended defaults logs a warning each time the file is loaded.

Example (see ``deploy/examples/site-a.yaml``)::

    site_id: hospital-a
    sources:
      - path: data/            # a folder scanned recursively
        fundus_grades_csv: data/grades.csv
    state_dir: state/          # catalog, accountant, keys, outputs, quarantine log
    privacy:
      max_epsilon: 8.0
      delta: 1.0e-5
      unit: patient            # or image
      min_k: 5
      min_patients: 3
      accepted_tasks: [dpgan, synthesize]
      ksalsa_groups: nearest   # or random (k-SALSA groups; see PrivacyPolicy)
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from protocols.errors import ConfigError
from protocols.messages import KSALSA_GROUPINGS
from protocols.tasks import PrivacyUnit, Task

log = logging.getLogger(__name__)

_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
RECOMMENDED_MAX_EPSILON = 10.0
RECOMMENDED_MIN_K = 5
MAX_FILE_BYTES_LIMIT = 8 * 1024**3


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """A folder scanned recursively for DICOM, NIfTI and PNG/JPEG files."""

    path: Path
    fundus_grades_csv: Path | None = None  # CSV with columns file,grade[,patient]
    nifti_manifest: Path | None = None  # CSV with columns image,label[,patient]; else the naming rule


class PacsKind(str, enum.Enum):
    """How the agent talks to a PACS."""

    DICOMWEB = "dicomweb"  # QIDO-RS to find, WADO-RS to retrieve, STOW-RS to push
    DIMSE = "dimse"  # C-FIND, then C-GET or C-MOVE; C-STORE to push


class RetrieveMethod(str, enum.Enum):
    """DIMSE retrieval: C-GET on the same association, or C-MOVE to our own listening SCP."""

    C_GET = "c-get"
    C_MOVE = "c-move"


@dataclasses.dataclass(frozen=True)
class PacsFilters:
    """Which series a PACS sync retrieves; an empty filter matches everything."""

    modalities: frozenset[str] = frozenset()
    series_description: str | None = None  # shell-style pattern, case-insensitive ("*TOF*")
    date_from: datetime.date | None = None  # study date, inclusive
    date_to: datetime.date | None = None  # study date, inclusive


@dataclasses.dataclass(frozen=True)
class PacsEndpoint:
    """Where and how to connect to a DICOM server; the password is never shown or logged."""

    kind: PacsKind
    url: str | None = None  # DICOMweb base URL, e.g. http://pacs:8042/dicom-web
    host: str | None = None  # DIMSE
    port: int | None = None  # DIMSE
    called_ae: str | None = None  # DIMSE: the PACS's AE title
    calling_ae: str = "ANONFED"  # DIMSE: our AE title, registered at the PACS
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    password_env: str | None = None  # name of the environment variable holding the password
    timeout_s: float = 30.0
    ca_file: Path | None = None  # DICOMweb over https with the hospital's own CA (PEM)

    def resolve_password(self) -> str | None:
        """The password from the config or from ``password_env``.

        Raises
        ------
        ConfigError
            If ``password_env`` names a variable that is not set.
        """
        if self.password is not None:
            return self.password
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"password_env: environment variable {self.password_env} is not set; export it "
                "before starting the agent (the password is never read from the command line)"
            )
        return value

    def describe(self) -> str:
        """Where this endpoint is, without credentials."""
        if self.kind is PacsKind.DICOMWEB:
            return f"dicomweb {self.url}"
        return f"dimse {self.called_ae}@{self.host}:{self.port} as {self.calling_ae}"

    def credentials_note(self) -> str:
        """How the password is supplied (never the password itself), for ``check-config``."""
        if self.username is None:
            return "no credentials"
        if self.password_env is not None:
            state = "set" if self.password_env in os.environ else "NOT SET"
            return f"user {self.username}, password from ${self.password_env} ({state})"
        return f"user {self.username}, password in the config file"


@dataclasses.dataclass(frozen=True)
class PacsSource:
    """A PACS synced into a site-local staging folder, which ingest then scans like a folder.

    ``path`` is that staging folder (``<state_dir>/pacs/<name>``), so code that reads folder
    sources needs no special case; ``fundus_grades_csv`` and ``nifti_manifest`` are always None.
    """

    name: str
    endpoint: PacsEndpoint
    path: Path
    filters: PacsFilters = PacsFilters()
    retrieve: RetrieveMethod = RetrieveMethod.C_GET
    move_port: int | None = None  # C-MOVE: port of our storage SCP, as registered at the PACS
    max_concurrency: int = 4
    destination: PacsEndpoint | None = None  # where synthetic outputs are pushed, if anywhere
    fundus_grades_csv: None = None
    nifti_manifest: None = None

    @property
    def kind(self) -> PacsKind:
        return self.endpoint.kind

    def describe(self) -> str:
        """One line for ``check-config``: where, what, and where pushes go (no credentials)."""
        text = f"{self.name}: {self.endpoint.describe()} [{self.endpoint.credentials_note()}] -> {self.path}"
        if self.destination is not None:
            text += f" (push to {self.destination.describe()})"
        return text


@dataclasses.dataclass(frozen=True)
class StatePaths:
    """Where the site's durable state lives; nothing here ever leaves the site."""

    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def accountant(self) -> Path:
        return self.root / "accountant"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"


@dataclasses.dataclass(frozen=True)
class PrivacyPolicy:
    """The site's own privacy policy; the agent enforces it whatever the coordinator asks."""

    max_epsilon: float
    delta: float
    unit: PrivacyUnit = PrivacyUnit.PATIENT
    min_k: int = RECOMMENDED_MIN_K
    min_patients: int = 3
    accepted_tasks: frozenset[Task] = frozenset({Task.DPGAN, Task.SYNTHESIZE})
    # How k-SALSA forms its groups: "nearest" (published: similar patients, so an average resembles
    # its members) or "random" (a shuffle with the site's secret seed; less membership leakage).
    ksalsa_groups: str = "nearest"


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    """Limits applied while scanning sources."""

    max_file_bytes: int = 2 * 1024**3
    follow_symlinks: bool = True


@dataclasses.dataclass(frozen=True)
class SiteConfig:
    """A validated site configuration."""

    site_id: str
    sources: tuple[FolderSource | PacsSource, ...]
    state: StatePaths
    privacy: PrivacyPolicy
    ingest: IngestSettings = IngestSettings()
    source_file: Path | None = None

    def describe(self) -> str:
        """Human-readable summary (no secrets, no patient data)."""
        lines = [f"site_id: {self.site_id}", f"state_dir: {self.state.root}", "sources:"]
        lines += [f"  - {s.describe() if isinstance(s, PacsSource) else s.path}" for s in self.sources]
        p = self.privacy
        tasks = ", ".join(sorted(t.value for t in p.accepted_tasks))
        lines += [
            "privacy:",
            f"  max_epsilon: {p.max_epsilon}  delta: {p.delta:g}  unit: {p.unit.value}",
            f"  min_k: {p.min_k}  min_patients: {p.min_patients}",
            f"  accepted_tasks: {tasks}",
            f"  ksalsa_groups: {p.ksalsa_groups}",
        ]
        return "\n".join(lines)


def load_site_config(path: Path | str) -> SiteConfig:
    """Read and validate a site YAML file.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or any key is missing, unknown or invalid; the
        message names the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read site config {path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"site config {path} is not valid YAML: {exc}") from exc
    return parse_site_config(raw, base_dir=path.resolve().parent, source_file=path)


def parse_site_config(raw: Any, *, base_dir: Path, source_file: Path | None = None) -> SiteConfig:
    """Validate an already-parsed mapping (see :func:`load_site_config`)."""
    top = _mapping(raw, "(top level)")
    _reject_unknown(top, {"site_id", "sources", "state_dir", "privacy", "ingest"}, "")
    site_id = _required(top, "site_id", "")
    if not isinstance(site_id, str) or not _SITE_ID.match(site_id):
        raise ConfigError(
            f"site_id: expected 2-63 lowercase letters, digits or '-', starting with a letter or digit; got {site_id!r}"
        )
    state = StatePaths(_path(_required(top, "state_dir", ""), "state_dir", base_dir))
    sources = tuple(
        _parse_source(item, i, base_dir, state) for i, item in enumerate(_list(_required(top, "sources", ""), "sources"))
    )
    if not sources:
        raise ConfigError("sources: at least one source folder is required")
    _reject_duplicate_pacs_names(sources)
    privacy = _parse_privacy(_mapping(_required(top, "privacy", ""), "privacy"))
    ingest = _parse_ingest(_mapping(top.get("ingest", {}) or {}, "ingest"))
    return SiteConfig(site_id, sources, state, privacy, ingest, source_file)


def _parse_source(item: Any, index: int, base_dir: Path, state: StatePaths) -> FolderSource | PacsSource:
    where = f"sources[{index}]"
    if isinstance(item, str):
        item = {"path": item}
    m = _mapping(item, where)
    kind = m.get("kind", "folder")
    if kind != "folder":
        from agent.pacs.source_config import parse_pacs_source  # PACS keys are validated there

        return parse_pacs_source(m, where=where, index=index, state_root=state.root, base_dir=base_dir)
    _reject_unknown(m, {"kind", "path", "fundus_grades_csv", "nifti_manifest"}, where + ".")
    folder = _path(_required(m, "path", where + "."), f"{where}.path", base_dir)
    if not folder.is_dir():
        raise ConfigError(f"{where}.path: folder {folder} does not exist or is not a directory")
    csv = _optional_file(m, "fundus_grades_csv", where, base_dir)
    manifest = _optional_file(m, "nifti_manifest", where, base_dir)
    return FolderSource(folder, csv, manifest)


def _reject_duplicate_pacs_names(sources: tuple[FolderSource | PacsSource, ...]) -> None:
    seen: set[str] = set()
    for i, s in enumerate(sources):
        if isinstance(s, PacsSource):
            if s.name in seen:
                raise ConfigError(f"sources[{i}].name: {s.name!r} is used twice; each PACS source needs its own name")
            seen.add(s.name)


def _parse_privacy(m: Mapping[str, Any]) -> PrivacyPolicy:
    _reject_unknown(m, {"max_epsilon", "delta", "unit", "min_k", "min_patients", "accepted_tasks", "ksalsa_groups"},
                    "privacy.")
    max_eps = _number(_required(m, "max_epsilon", "privacy."), "privacy.max_epsilon")
    if not 0 < max_eps < float("inf"):
        raise ConfigError(f"privacy.max_epsilon: expected a finite number > 0, got {max_eps}")
    delta = _number(_required(m, "delta", "privacy."), "privacy.delta")
    if not 0 < delta < 1:
        raise ConfigError(f"privacy.delta: expected 0 < delta < 1 (typically < 1/#patients), got {delta}")
    unit_raw = m.get("unit", PrivacyUnit.PATIENT.value)
    try:
        unit = PrivacyUnit(unit_raw)
    except ValueError as exc:
        raise ConfigError(f"privacy.unit: expected one of {[u.value for u in PrivacyUnit]}, got {unit_raw!r}") from exc
    min_k = _integer(m.get("min_k", RECOMMENDED_MIN_K), "privacy.min_k", minimum=2)
    min_patients = _integer(m.get("min_patients", 3), "privacy.min_patients", minimum=1)
    tasks_raw = _list(m.get("accepted_tasks", [Task.DPGAN.value, Task.SYNTHESIZE.value]), "privacy.accepted_tasks")
    tasks = set()
    for i, t in enumerate(tasks_raw):
        try:
            tasks.add(Task(t))
        except ValueError as exc:
            raise ConfigError(
                f"privacy.accepted_tasks[{i}]: unknown task {t!r}; known: {[x.value for x in Task]}"
            ) from exc
    groups = m.get("ksalsa_groups", "nearest")
    if groups not in KSALSA_GROUPINGS:
        raise ConfigError(f"privacy.ksalsa_groups: expected one of {list(KSALSA_GROUPINGS)}, got {groups!r}")
    policy = PrivacyPolicy(max_eps, delta, unit, min_k, min_patients, frozenset(tasks), groups)
    _warn_relaxed(policy)
    return policy


def _warn_relaxed(p: PrivacyPolicy) -> None:
    # Warn on every load, not once: a relaxed setting should never become background noise.
    if p.max_epsilon > RECOMMENDED_MAX_EPSILON:
        log.warning("privacy.max_epsilon=%s is above the recommended %s", p.max_epsilon, RECOMMENDED_MAX_EPSILON)
    if p.unit is PrivacyUnit.IMAGE:
        log.warning("privacy.unit=image protects single images, not patients with several images")
    if p.min_k < RECOMMENDED_MIN_K:
        log.warning("privacy.min_k=%d is below the recommended %d", p.min_k, RECOMMENDED_MIN_K)
    if Task.GAN_NODP in p.accepted_tasks:
        log.warning("privacy.accepted_tasks includes gan-nodp: models trained WITHOUT any privacy guarantee")


def _parse_ingest(m: Mapping[str, Any]) -> IngestSettings:
    _reject_unknown(m, {"max_file_bytes", "follow_symlinks"}, "ingest.")
    default = IngestSettings()
    max_bytes = _integer(m.get("max_file_bytes", default.max_file_bytes), "ingest.max_file_bytes", minimum=1)
    if max_bytes > MAX_FILE_BYTES_LIMIT:
        raise ConfigError(f"ingest.max_file_bytes: at most {MAX_FILE_BYTES_LIMIT} bytes, got {max_bytes}")
    follow = m.get("follow_symlinks", default.follow_symlinks)
    if not isinstance(follow, bool):
        raise ConfigError(f"ingest.follow_symlinks: expected true or false, got {follow!r}")
    return IngestSettings(max_bytes, follow)


# -- small validators that name the key -----------------------------------------------------------
def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping (key: value lines), got {type(value).__name__}")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def _required(m: Mapping[str, Any], name: str, prefix: str) -> Any:
    if name not in m or m[name] is None:
        raise ConfigError(f"{prefix}{name}: required key is missing")
    return m[name]


def _reject_unknown(m: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(map(str, m)) - allowed)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed here: {', '.join(sorted(allowed))})")


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # YAML 1.1 reads "1e-5" as a string; accept it, reject anything else.
        try:
            return float(str(value))
        except ValueError as exc:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from exc
    return float(value)


def _integer(value: Any, key: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value}")
    return value


def _path(value: Any, key: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a path string, got {value!r}")
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base_dir / p).resolve()


def _optional_file(m: Mapping[str, Any], name: str, where: str, base_dir: Path) -> Path | None:
    if m.get(name) is None:
        return None
    p = _path(m[name], f"{where}.{name}", base_dir)
    if not p.is_file():
        raise ConfigError(f"{where}.{name}: file {p} does not exist")
    return p
