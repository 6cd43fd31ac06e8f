"""``anonfed rounds run``: launch federated rounds (dpgan or stylegan-dp) on a running SuperLink.

The command turns its options into Flower run-config overrides, checks them with
:class:`~coordinator.rounds.plan.FederationPlan` before anything is sent (a bad plan fails here,
not at every site), and runs ``flwr run APP CONNECTION --stream`` with them. ``--dry-run`` prints
the run config and the first round's instruction instead. The SuperLink connection comes from
``$FLWR_HOME/config.toml`` (``deploy/flower/write-connection.sh``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

#: Defaults that depend on the task (anything else defaults as in FederationPlan / the app bundle).
TASK_DEFAULTS: dict[str, dict[str, object]] = {
    "dpgan": {"architecture": "wgan-gp", "patch-size": 32, "patches-per-volume": 16, "dataset-id": "tof"},
    # small64 is the CPU StyleGAN2 configuration; the sites train on their fundus photographs.
    "stylegan-dp": {"architecture": "small64", "patch-size": 64, "patches-per-volume": 4, "dataset-id": "fundus"},
}
#: Option name -> run-config key, for the options passed through when given.
_PASS_THROUGH = ("rounds", "local-steps", "target-epsilon", "delta", "unit", "expected-batch-patients",
                 "max-grad-norm", "consortium-budget", "synth-count", "min-sites", "seed", "run-id")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``rounds run`` to the ``anonfed`` parser."""
    p = sub.add_parser(
        "rounds",
        help="launch federated DP rounds (dpgan or stylegan-dp) on a running SuperLink",
        description=(
            "Coordinator: launch federated rounds through `flwr run` on the SuperLink named by the connection "
            "in $FLWR_HOME/config.toml. Every site trains under its own policy and accountant and may refuse; "
            "weights are averaged (FedAvg by patients), epsilon is tracked per site and every release is a "
            "signed ledger entry. `anonfed demo` does the same on loopback with everything started for you."
        ),
    )
    cmds = p.add_subparsers(dest="rounds_command", metavar="STEP", required=True)
    r = cmds.add_parser(
        "run",
        help="check the plan and launch it",
        description=(
            "Tasks: dpgan (DP-GAN image+label patches of TOF-MRA, then a synthesize query per site) and "
            "stylegan-dp (StyleGAN2 on fundus photographs, discriminator trained with DP-SGD per patient, R1 "
            "included; the aggregated generator + discriminator in OUT/global_weights.npz is the release). "
            "stylegan-local is not a federated task: its weights never leave the site (`anonfed stylegan train`)."
        ),
        epilog="Example: anonfed rounds run --task stylegan-dp --out coord-out --keys pki/keys --rounds 5",
    )
    r.add_argument("--task", choices=sorted(TASK_DEFAULTS), default="dpgan", help="what the sites train (default dpgan)")
    r.add_argument("--out", type=Path, required=True, help="coordinator output folder (store, ledger, summary)")
    r.add_argument("--keys", type=Path, help="folder with coordinator.key and public/<site>.pub (without: no ledger)")
    r.add_argument("--app", type=Path, default=None, help="Flower app bundle (default: deploy/flower/app)")
    r.add_argument("--connection", default="anonfed", help="SuperLink connection name in $FLWR_HOME/config.toml")
    r.add_argument("--architecture", help="dpgan: dcgan | wgan-gp | wgan-gp-sn; stylegan-dp: small64 | cuda256 | "
                   "cuda512 | tiny16 (default: wgan-gp / small64)")
    r.add_argument("--patch-size", type=int, help="dpgan: patch edge; stylegan-dp: the configuration's resolution")
    r.add_argument("--patches-per-volume", type=int, help="dpgan: patches per volume; stylegan-dp: images of one "
                   "patient used per DP step at most")
    r.add_argument("--dataset-id", help="the accountant the spend is charged to (default: tof / fundus)")
    r.add_argument("--rounds", type=int, help="federated rounds")
    r.add_argument("--local-steps", type=int, help="DP-SGD steps per site per round")
    r.add_argument("--target-epsilon", type=float, help="per-site epsilon after all rounds (sites may cap it)")
    r.add_argument("--delta", type=float, help="delta (sites use the stricter of this and their own)")
    r.add_argument("--unit", choices=("patient", "image"), help="privacy unit (sites may insist on patient)")
    r.add_argument("--expected-batch-patients", type=int, help="expected patients per DP step")
    r.add_argument("--max-grad-norm", type=float, help="per-patient clipping norm")
    r.add_argument("--consortium-budget", type=float, help="per-site epsilon the consortium allows")
    r.add_argument("--synth-count", type=int, help="dpgan: synthetic pairs collected per site")
    r.add_argument("--min-sites", type=int, help="wait for this many connected sites")
    r.add_argument("--seed", type=int, help="weight init, latents, augmentation (never DP noise)")
    r.add_argument("--run-id", help="run name (default: run-<UTC time>)")
    r.add_argument("--initial-weights", type=Path,
                   help="dpgan: .npz of generator + critic weights round 1 starts from, e.g. a model `anonfed train` "
                   "trained without DP on PUBLIC data (its SHA-256 goes into summary.json)")
    r.add_argument("--dry-run", action="store_true", help="print the run config and round 1's instruction; send nothing")
    r.set_defaults(handler=_run)


def run_config_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Flower run-config overrides for the options given (task defaults filled in).

    Raises
    ------
    ConfigError
        If the resulting plan is invalid (checked by :meth:`FederationPlan.from_run_config`).
    """
    from coordinator.rounds.plan import FederationPlan

    cfg: dict[str, object] = {"task": args.task, **TASK_DEFAULTS[args.task]}
    for key in ("architecture", "patch-size", "patches-per-volume", "dataset-id", *_PASS_THROUGH):
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            cfg["num-rounds" if key == "rounds" else key] = value
    cfg["output-dir"] = str(Path(args.out).resolve())
    cfg["keys-dir"] = str(Path(args.keys).resolve()) if args.keys else ""
    if args.initial_weights is not None:
        cfg["initial-weights"] = str(Path(args.initial_weights).resolve())
    FederationPlan.from_run_config(cfg)  # fail here, not at every site
    return cfg


def _run(args: argparse.Namespace) -> int:
    from coordinator.rounds.plan import FederationPlan
    from protocols.errors import BadInputError, TransportError

    cfg = run_config_from_args(args)
    if args.dry_run:
        print(json.dumps({"run-config": cfg,
                          "round-1": FederationPlan.from_run_config(cfg).train_instruction(1).to_config()},
                         indent=2, sort_keys=True))
        return 0
    app = args.app or Path(__file__).resolve().parents[2] / "deploy" / "flower" / "app"
    if not (app / "pyproject.toml").is_file():
        raise BadInputError(f"no Flower app bundle at {app}; pass --app <folder with the app's pyproject.toml>")
    flwr = shutil.which("flwr")
    if flwr is None:
        raise TransportError("the flwr command is not installed; install anonfed with its dependencies (flwr)")
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in cfg.items())
    return subprocess.run([flwr, "run", str(app), args.connection, "--stream", "--run-config", overrides],
                          check=False).returncode


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
