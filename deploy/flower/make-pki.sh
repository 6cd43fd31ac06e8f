#!/usr/bin/env bash
# Coordinator: create the consortium CA, the SuperLink's TLS certificate and the ledger key.
# Usage: make-pki.sh OUT_DIR [HOST ...]     (default hosts: 127.0.0.1 localhost)
# Give OUT_DIR/ca.crt to every site. Keep OUT_DIR/ca.key, server.key and keys/coordinator.key private.
set -euo pipefail
out=${1:?usage: make-pki.sh OUT_DIR [HOST ...]}; shift || true
args=()
for h in "$@"; do args+=(--host "$h"); done
anonfed coordinator pki --out "$out" "${args[@]}"
