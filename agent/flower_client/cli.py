"""``anonfed enroll``: a site creates its own keys and exports the public halves for the consortium."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enroll",
        help="create this site's Flower node key and ledger signing key; export the public keys",
        description=(
            "Create (if missing) the site's SuperNode authentication key (ECDSA P-384, OpenSSH format, "
            "for `flower-supernode --auth-supernode-private-key`) and its ledger signing key (Ed25519) "
            "under the site's state folder, mode 0600. With --export, copy the PUBLIC keys to "
            "EXPORT/flower/<site>.pub (for `flwr supernode register`) and EXPORT/ledger/<site>.pub (for "
            "the coordinator's and auditors' key folders). Private keys never leave the site."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.add_argument("--export", type=Path, default=None, help="folder to copy the public keys to")
    p.set_defaults(handler=_enroll)


def _enroll(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.flower_client.enroll import enroll

    cfg = load_site_config(args.config)
    result = enroll(cfg, export_dir=args.export)
    print(f"site {cfg.site_id}: node key {result.node_private_key} (public {result.node_public_key})")
    if result.ledger_public_key:
        print(f"site {cfg.site_id}: ledger public key {result.ledger_public_key}")
    if args.export:
        print(f"public keys exported to {args.export}")
    return 0
