"""Site enrollment: the site creates its own keys; only public halves are handed to the consortium.

* Flower SuperNode authentication key: ECDSA P-384, private key in OpenSSH format (what
  ``flower-supernode --auth-supernode-private-key`` reads), public key in OpenSSH format (what
  ``flwr supernode register`` reads). Stored as ``<state>/keys/flower-node.key`` (0600) + ``.pub``.
* Ledger signing key: Ed25519 at ``agent.ledger.site_key_path`` (created here if missing).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import SiteConfig
from protocols.atomic_files import write_bytes_atomic

log = logging.getLogger(__name__)

NODE_KEY_NAME = "flower-node.key"


@dataclasses.dataclass(frozen=True)
class Enrollment:
    """Where the site's keys are, and the exported public keys."""

    node_private_key: Path
    node_public_key: Path
    ledger_public_key: Path | None


def enroll(site: SiteConfig, *, export_dir: Path | None = None) -> Enrollment:
    """Create the site's keys if missing; copy the public keys to ``export_dir/{flower,ledger}/<site>.pub``."""
    keys = site.state.keys
    node_key = keys / NODE_KEY_NAME
    node_pub = node_key.with_suffix(".pub")
    if not node_key.is_file():
        private = ec.generate_private_key(ec.SECP384R1())
        write_bytes_atomic(node_key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()), mode=0o600)
        write_bytes_atomic(node_pub, private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                            serialization.PublicFormat.OpenSSH) + b"\n", mode=0o644)
        log.info("created the Flower node key of %s", site.site_id)
    ledger_pub = _ensure_ledger_key(site)
    if export_dir is not None:
        (export_dir / "flower").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(node_pub, export_dir / "flower" / f"{site.site_id}.pub")
        if ledger_pub is not None:
            (export_dir / "ledger").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ledger_pub, export_dir / "ledger" / f"{site.site_id}.pub")
    return Enrollment(node_key, node_pub, ledger_pub)


def _ensure_ledger_key(site: SiteConfig) -> Path | None:
    try:
        from agent.ledger import site_key_path
        from protocols.signing import PUBLIC_SUFFIX, SigningKey, load_private_key, save_private_key, save_public_key
    except ImportError:  # pragma: no cover - ledger package not installed
        return None
    private = site_key_path(site.state.keys, site.site_id)
    public = private.with_suffix(PUBLIC_SUFFIX)
    if not private.is_file():
        key = SigningKey.generate()
        save_private_key(key, private)
        save_public_key(key.public, public)
    elif not public.is_file():
        save_public_key(load_private_key(private).public, public)
    return public
