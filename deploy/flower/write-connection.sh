#!/usr/bin/env bash
# Coordinator: write the `flwr` CLI connection "anonfed" into $FLWR_HOME/config.toml.
# Usage: FLWR_HOME=... write-connection.sh HOST:PORT CA_CERT
set -euo pipefail
: "${FLWR_HOME:?set FLWR_HOME}"
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "anonfed"

[superlink.anonfed]
address = "${1:?host:port}"
root-certificates = "$(realpath "${2:?ca cert}")"
TOML
