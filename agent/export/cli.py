"""``anonfed export-dicom``: write synthetic outputs as DICOM, validate them, push them if configured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from protocols.errors import BadInputError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``anonfed export-dicom tof`` and ``anonfed export-dicom fundus``."""
    group = sub.add_parser(
        "export-dicom",
        help="write synthetic outputs as DICOM (SC+SEG for TOF pairs, OP for fundus); optionally push",
        description=(
            "Convert synthetic samples (NPZ from `anonfed train` or a k-SALSA release) into DICOM "
            "that says it is synthetic: Secondary Capture with Conversion Type SYN and a SEG "
            "'Blood vessel' per TOF patch, Ophthalmic Photography for fundus images, with Patient "
            "Identity Removed, de-identification codes and the privacy guarantee in the header. "
            "With --push, send them to the destination(s) named in the site config."
        ),
    )
    kinds = group.add_subparsers(dest="export_kind", metavar="KIND", required=True)
    for kind, help_text in (("tof", "image+label pairs (n, 2, S, S)"), ("fundus", "RGB fundus images (n, H, W, 3) uint8")):
        p = kinds.add_parser(kind, help=help_text)
        p.add_argument("--npz", type=Path, required=True, help="samples: 'pairs' or 'images'+'labels' (tof), 'images' (fundus)")
        p.add_argument("--out", type=Path, required=True, help="output folder for the DICOM files")
        p.add_argument("--config", type=Path, help="site YAML (site id, push destinations)")
        p.add_argument("--site-id", help="site id when no --config is given")
        p.add_argument("--method", help="task that produced the samples (default dpgan for tof, ksalsa for fundus)")
        p.add_argument("--epsilon", type=float, help="DP epsilon (default: from the NPZ's JSON sidecar)")
        p.add_argument("--delta", type=float, help="DP delta (default: from the sidecar)")
        p.add_argument("--unit", help="DP privacy unit, patient or image (default: from the sidecar)")
        p.add_argument("--k", type=int, help="k-SALSA: distinct patients per synthetic image")
        p.add_argument("--model-sha256", help="sha256 of the released model weights")
        p.add_argument("--run-id", help="federated run id")
        p.add_argument("--round", type=int, help="federated round")
        p.add_argument("--validate", action="store_true", help="run dciodvfy on every file; fail on any error")
        p.add_argument("--push", action="store_true", help="push to every destination in the site config")
        if kind == "fundus":
            p.add_argument("--laterality", default="B", choices=["R", "L", "B"], help="image laterality (B: both eyes)")
            p.add_argument("--iod", default="op", choices=["op", "sc"], help="OP IOD (default) or SC with Conversion Type SYN")
        p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.export.fundus_dicom import FundusIod, write_fundus_images
    from agent.export.synthetic_marking import SyntheticProvenance
    from agent.export.tof_dicom import write_tof_pairs
    from protocols.tasks import Task

    cfg = None
    if args.config is not None:
        from agent.config import load_site_config

        cfg = load_site_config(args.config)
    site_id = cfg.site_id if cfg is not None else args.site_id
    if not site_id:
        raise BadInputError("--site-id: required when no --config is given (it is written into the provenance)")
    if args.push and cfg is None:
        raise BadInputError("--push: needs --config, whose PACS sources name the destination(s)")
    try:
        data = np.load(args.npz)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"--npz: cannot read {args.npz.name} as NPZ ({exc})") from exc
    sidecar = _sidecar(args.npz)
    privacy = sidecar.get("privacy", {}) if isinstance(sidecar.get("privacy"), dict) else {}
    epsilon = args.epsilon if args.epsilon is not None else _float(privacy.get("epsilon"))
    method_default = "dpgan" if args.export_kind == "tof" else "ksalsa"
    try:
        method = Task(args.method or sidecar.get("method") or method_default)
    except ValueError as exc:
        raise BadInputError(f"--method: unknown task {args.method!r}; known: {[t.value for t in Task]}") from exc
    provenance = SyntheticProvenance(
        method=method,
        site_id=site_id,
        model_sha256=args.model_sha256 or sidecar.get("weights_sha256"),
        run_id=args.run_id or sidecar.get("run_id"),
        round=args.round if args.round is not None else sidecar.get("round"),
        epsilon=epsilon,
        delta=args.delta if args.delta is not None else _float(privacy.get("delta")),
        privacy_unit=args.unit or privacy.get("unit"),
        k=args.k if args.k is not None else sidecar.get("k"),
    )
    if args.export_kind == "tof":
        if "pairs" in data:
            pairs = data["pairs"]
        elif "images" in data and "labels" in data:
            pairs = np.stack([data["images"], data["labels"]], axis=1)
        else:
            raise BadInputError(f"--npz: expected arrays 'pairs' or 'images'+'labels', found {sorted(data.files)}")
        files = write_tof_pairs(pairs, args.out, provenance=provenance).files
    else:
        if "images" not in data:
            raise BadInputError(f"--npz: expected an array 'images' (n, H, W, 3) uint8, found {sorted(data.files)}")
        files = write_fundus_images(
            data["images"], args.out, provenance=provenance, laterality=args.laterality, iod=FundusIod(args.iod)
        ).files
    print(f"wrote {len(files)} synthetic DICOM file(s) to {args.out} ({provenance.guarantee()})")
    if args.validate:
        from agent.export.validation import validate_files

        bad = [f for f in validate_files(list(files)) if not f.ok]
        for f in bad:
            print(f"FAIL: {f.path.name}: {f.errors[0]}")
        if bad:
            raise BadInputError(f"dciodvfy found errors in {len(bad)} of {len(files)} file(s); see above")
        print(f"OK: dciodvfy found no errors in {len(files)} file(s)")
    if args.push:
        from agent.pacs.push import push_to_site_destinations

        reports = push_to_site_destinations(cfg, files)  # type: ignore[arg-type]
        if not reports:
            print("no push destination configured (add destination: to a PACS source in the site config)")
        for r in reports:
            print(f"pushed {r.sent} file(s) to {r.destination}")
    return 0


def _sidecar(npz: Path) -> dict[str, Any]:
    path = npz.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"sidecar {path.name} is not valid JSON ({exc}); fix or remove it") from exc
    return doc if isinstance(doc, dict) else {}


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)  # "inf" -> math.inf: no DP
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"sidecar privacy value {value!r} is not a number; pass --epsilon/--delta explicitly") from exc
