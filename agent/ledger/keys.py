"""Where a site keeps its signing key, and how the agent loads it.

The private key is ``<state_dir>/keys/<site_id>.key`` (mode 0600, created by
``anonfed keys create --config site.yaml``). If it is encrypted, the passphrase comes from the
environment variable ``ANONFED_KEY_PASSPHRASE`` (never from the config file or the command line).
"""

from __future__ import annotations

import os
from pathlib import Path

from protocols.signing import PRIVATE_SUFFIX, SigningKey, load_private_key

PASSPHRASE_ENV = "ANONFED_KEY_PASSPHRASE"


def site_key_path(state_keys_dir: Path, site_id: str) -> Path:
    """``<state>/keys/<site_id>.key``."""
    return Path(state_keys_dir) / f"{site_id}{PRIVATE_SUFFIX}"


def passphrase_from_env() -> bytes | None:
    """The key passphrase from ``ANONFED_KEY_PASSPHRASE``, if set."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def load_site_key(cfg: "object") -> SigningKey:
    """Load the site's private key for a :class:`agent.config.SiteConfig`.

    Raises
    ------
    BadInputError
        If the key is missing, has a loose file mode, or the passphrase is missing or wrong.
    """
    return load_private_key(site_key_path(cfg.state.keys, cfg.site_id), passphrase=passphrase_from_env())  # type: ignore[attr-defined]
