#!/usr/bin/env bash
# Coordinator: register each enrolled site's SuperNode public key (only registered keys may connect).
# Usage: FLWR_HOME=... register-sites.sh ENROLLED_DIR      (ENROLLED_DIR/flower/<site>.pub)
set -euo pipefail
for pub in "${1:?enrolled dir}"/flower/*.pub; do
  site=$(basename "$pub" .pub)
  flwr supernode register "$pub" anonfed --name "$site"
done
