#!/usr/bin/env bash
# Site: create this site's SuperNode key (ECDSA P-384, OpenSSH format) and ledger key (Ed25519),
# mode 0600 in the site's state folder, and export the PUBLIC keys for the coordinator.
# Usage: enroll-site.sh SITE_YAML EXPORT_DIR
set -euo pipefail
anonfed enroll --config "${1:?site yaml}" --export "${2:?export dir}"
