"""``anonfed ledger show`` (hospital staff) and ``anonfed keys ...`` (enrollment, auditors).

Keys: ``keys create --config site.yaml`` makes the site's key in ``<state_dir>/keys/<site_id>.key``;
``keys create --name coordinator --out DIR`` makes any other key (the coordinator's);
``keys export KEY --out DIR`` writes ``NAME.pub`` for the auditors' key folder. A passphrase is
read from the environment variable named by ``--passphrase-env`` (never from the command line,
where other users could see it in the process list).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from protocols.errors import BadInputError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ledger`` and ``keys`` to the ``anonfed`` parser."""
    p = sub.add_parser("ledger", help="show what this site has released and spent (its own signed claims)")
    lsub = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    s = lsub.add_parser(
        "show",
        help="list this site's signed claims and cumulative epsilon",
        description=(
            "Print every claim this site signed (from its own claim log): round, task, dataset, guarantee, "
            "epsilon spent and cumulative epsilon per dataset, k-anonymity releases and artifacts. With --ledger, "
            "also compare against the coordinator's ledger and report omitted or altered claims."
        ),
    )
    s.add_argument("--config", type=Path, required=True, help="site YAML file")
    s.add_argument("--ledger", type=Path, help="the coordinator's ledger.jsonl to compare against")
    s.set_defaults(handler=_show)

    k = sub.add_parser("keys", help="create Ed25519 signing keys and export public keys for auditors")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ksub.add_parser(
        "create",
        help="create a key pair (private key mode 0600)",
        description=(
            "Create an Ed25519 key pair. With --config: the site's key in <state_dir>/keys/<site_id>.key. "
            "Otherwise --name and --out (e.g. --name coordinator). The private key never leaves this machine."
        ),
    )
    c.add_argument("--config", type=Path, help="site YAML file (creates the site's key)")
    c.add_argument("--name", help="key name (without --config), e.g. coordinator")
    c.add_argument("--out", type=Path, help="folder for NAME.key and NAME.pub (without --config)")
    c.add_argument("--passphrase-env", metavar="VAR", help="encrypt with the passphrase in environment variable VAR")
    c.set_defaults(handler=_create)
    e = ksub.add_parser(
        "export",
        help="write NAME.pub for an auditor's key folder",
        description="Export the public half of a key (from a .key or .pub file) as NAME.pub into --out.",
    )
    e.add_argument("key", type=Path, help="a private .key or public .pub file")
    e.add_argument("--out", type=Path, required=True, help="the auditors' key folder")
    e.add_argument("--name", help="name of the exported file (default: the key file's name); a site id or coordinator")
    e.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key's passphrase")
    e.set_defaults(handler=_export)


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise BadInputError(f"--passphrase-env {var}: the environment variable is not set or empty")
    return value.encode("utf-8")


def _create(args: argparse.Namespace) -> int:
    from protocols.signing import PUBLIC_SUFFIX, SigningKey, save_private_key, save_public_key

    if args.config is not None:
        from agent.config import load_site_config
        from agent.ledger.keys import site_key_path

        cfg = load_site_config(args.config)
        private = site_key_path(cfg.state.keys, cfg.site_id)
    elif args.name and args.out:
        private = args.out / f"{args.name}.key"
    else:
        raise BadInputError("keys create: give --config site.yaml, or both --name and --out")
    key = SigningKey.generate()
    save_private_key(key, private, passphrase=_passphrase(args.passphrase_env))
    public = private.with_suffix(PUBLIC_SUFFIX)
    save_public_key(key.public, public)
    print(f"created {private} (mode 0600) and {public}; key id {key.key_id}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from protocols.signing import PUBLIC_SUFFIX, load_private_key, load_public_key, save_public_key

    if args.key.suffix == PUBLIC_SUFFIX:
        public = load_public_key(args.key)
    else:
        public = load_private_key(args.key, passphrase=_passphrase(args.passphrase_env)).public
    target = args.out / f"{args.name or args.key.stem}{PUBLIC_SUFFIX}"
    args.out.mkdir(parents=True, exist_ok=True)
    save_public_key(public, target)
    print(f"exported {target}; key id {public.key_id}")
    return 0


def _fmt(eps: float) -> str:
    return "inf" if eps == math.inf else f"{eps:.4f}"


def _show(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.ledger.compare import compare_with_ledger, read_ledger_entries
    from agent.ledger.site_log import SiteClaimLog, claim_log_path

    cfg = load_site_config(args.config)
    claims = SiteClaimLog(claim_log_path(cfg.state.root)).claims()
    print(f"site {cfg.site_id}: {len(claims)} signed claim(s); budget max_epsilon {cfg.privacy.max_epsilon:g} "
          f"at delta {cfg.privacy.delta:g}")
    print(f"{'#':>4} {'time':<20} {'run':<16} {'rnd':>4} {'task':<14} {'dataset':<10} {'guarantee':<15} "
          f"{'epsilon':>9} {'cumulative':>10} {'k':>4} {'artifacts':>9} started from")
    cumulative: dict[str, float] = {}
    for signed in claims:
        c = signed.claim
        kind = c.mechanism.kind.value
        if kind in ("dp-sgd", "none"):
            cumulative[c.dataset] = max(cumulative.get(c.dataset, 0.0), c.cumulative_epsilon)
        k = "" if c.kanon is None else str(c.kanon.k)
        start = (c.start_weights_sha256 or "")[:12]  # the model a training round started from (claim schema 2)
        print(f"{c.site_seq:>4} {c.time[:19]:<20} {c.run_id[:16]:<16} {c.round:>4} {c.task.value:<14} {c.dataset[:10]:<10} "
              f"{kind:<15} {_fmt(c.epsilon):>9} {_fmt(c.cumulative_epsilon):>10} {k:>4} {len(c.artifacts):>9} {start}")
    for dataset, eps in sorted(cumulative.items()):
        left = "" if eps == math.inf else f" ({max(0.0, cfg.privacy.max_epsilon - eps):.4f} left of {cfg.privacy.max_epsilon:g})"
        print(f"cumulative epsilon for {dataset}: {_fmt(eps)}{left}")
    if args.ledger is None:
        return 0
    found = compare_with_ledger(claims, read_ledger_entries(args.ledger), site=cfg.site_id)
    for d in found:
        print(f"FAIL: {d.kind.value}: {d.message}")
    if not found:
        print(f"OK: all {len(claims)} claim(s) of {cfg.site_id} are in the ledger, unaltered")
        return 0
    from protocols.errors import ChainError

    return ChainError.exit_code
