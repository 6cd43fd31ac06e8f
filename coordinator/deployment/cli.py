"""Coordinator subcommands: ``anonfed demo``, ``anonfed simulate``, ``anonfed coordinator ...``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: phantom consortium, real Flower SuperLink + 3 SuperNodes (TLS, node auth), "
        "DP-GAN rounds, synthetic collection, verified ledger",
        description=(
            "Run the whole system on loopback: generate the phantom consortium, ingest every site, create "
            "certificates and keys, start a SuperLink (TLS, SuperNode authentication, state database) and one "
            "SuperNode per site, run federated DP-GAN (or, with --task stylegan-dp, DP StyleGAN2) rounds, "
            "collect synthetic outputs with a synthesize query, verify the privacy ledger and export the synthetic dataset. Every step runs as a child "
            "process; all are stopped on success, failure or Ctrl-C."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="work folder (created; reused data are kept)")
    p.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    p.add_argument("--local-steps", type=int, default=2, help="DP critic steps per site per round (default 2)")
    p.add_argument("--task", default="dpgan", choices=("dpgan", "stylegan-dp"),
                   help="what the sites train: dpgan (TOF image+label patches, then a synthesize query; default) or "
                        "stylegan-dp (StyleGAN2 on the fundus photographs, discriminator under per-patient DP-SGD; "
                        "the CPU-scale tiny16 configuration at 16 px; the aggregated weights are the release)")
    p.add_argument("--patch-size", type=int, default=32, choices=(32, 64), help="dpgan patch edge in pixels (default 32)")
    p.add_argument("--target-epsilon", type=float, default=8.0, help="per-site target epsilon for the run (default 8)")
    p.add_argument("--synth-count", type=int, default=16, help="dpgan: synthetic pairs collected per site (default 16)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds (default 1800)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser(
        "simulate",
        help="run the same Flower apps on Flower's simulation engine with many virtual sites",
        description=(
            "Generate N small phantom sites, ingest them, and run the same ServerApp and ClientApp on "
            "Flower's simulation engine (Ray), one virtual SuperNode per site."
        ),
    )
    p.add_argument("--sites", type=int, required=True, help="number of virtual sites")
    p.add_argument("--out", type=Path, required=True, help="work folder")
    p.add_argument("--rounds", type=int, default=2, help="federated rounds (default 2)")
    p.add_argument("--local-steps", type=int, default=1, help="DP critic steps per site per round (default 1)")
    p.add_argument("--synth-count", type=int, default=4, help="synthetic pairs per site (default 4)")
    p.add_argument("--cpus-per-site", type=int, default=1, help="Ray CPUs per virtual site (default 1)")
    p.set_defaults(handler=_simulate)

    p = sub.add_parser("coordinator", help="coordinator tools: certificates, store export")
    csub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = csub.add_parser("pki", help="create the consortium CA, the SuperLink TLS certificate and the ledger key")
    q.add_argument("--out", type=Path, required=True, help="folder for ca.crt, server.pem/.key and keys/")
    q.add_argument("--host", action="append", default=None, help="host name or IP for the certificate (repeatable)")
    q.set_defaults(handler=_pki)
    q = csub.add_parser("export", help="export the synthetic-output store as a dataset folder")
    q.add_argument("--store", type=Path, required=True, help="the store folder (OUTPUT/store)")
    q.add_argument("--dest", type=Path, required=True, help="dataset folder to write")
    q.set_defaults(handler=_export)
    q = csub.add_parser("verify-store", help="re-hash every stored synthetic output")
    q.add_argument("--store", type=Path, required=True, help="the store folder (OUTPUT/store)")
    q.set_defaults(handler=_verify_store)


def _demo(args: argparse.Namespace) -> int:
    from coordinator.demo import DemoOptions, run_demo

    opts = DemoOptions(out=args.out, sites=args.sites, rounds=args.rounds, local_steps=args.local_steps,
                       patch_size=args.patch_size, target_epsilon=args.target_epsilon, synth_count=args.synth_count,
                       timeout_s=args.timeout, task=args.task)
    return run_demo(opts)


def _simulate(args: argparse.Namespace) -> int:
    from coordinator.deployment.simulation import SimulationOptions, run_simulation_cli

    return run_simulation_cli(SimulationOptions(
        sites=args.sites, out=args.out, rounds=args.rounds, local_steps=args.local_steps,
        synth_count=args.synth_count, cpus_per_site=args.cpus_per_site,
    ))


def _pki(args: argparse.Namespace) -> int:
    from coordinator.deployment.pki import make_coordinator_ledger_key, make_server_pki

    hosts = tuple(args.host) if args.host else ("127.0.0.1", "localhost")
    pki = make_server_pki(args.out, hosts=hosts)
    key = make_coordinator_ledger_key(args.out / "keys")
    print(f"CA certificate (give to sites): {pki.ca_cert}")
    print(f"SuperLink certificate and key: {pki.server_cert}, {pki.server_key}")
    print(f"coordinator ledger key: {key} (public half in {key.parent / 'public'})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from coordinator.store import SyntheticStore
    from coordinator.store.export import export_dataset

    with SyntheticStore(args.store) as store:
        manifest = export_dataset(store, args.dest)
        print(f"exported {len(store.entries())} synthetic output(s); manifest {manifest}")
    return 0


def _verify_store(args: argparse.Namespace) -> int:
    from coordinator.store import SyntheticStore
    from protocols.errors import IntegrityError

    with SyntheticStore(args.store) as store:
        problems = store.verify()
        for p in problems:
            print(f"FAIL: {p}")
        if problems:
            raise IntegrityError(f"{len(problems)} stored output(s) failed verification")
        print(f"OK: {len(store.entries())} indexed output(s) verified")
    return 0
