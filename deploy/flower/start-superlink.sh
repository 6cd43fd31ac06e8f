#!/usr/bin/env bash
# Coordinator: start the SuperLink with TLS, SuperNode authentication and a state database.
# Usage: start-superlink.sh PKI_DIR STATE_DIR [PORT]
# SECURITY: the Control API (run submission, node registration) has NO authentication in open-source
# Flower and shares this port with the Fleet API. Bind to 127.0.0.1 (default here) and, if sites must
# reach it over a network, put a reverse proxy in front that forwards ONLY /v1/fleet/* (see README.md).
set -euo pipefail
pki=${1:?pki dir}; state=${2:?state dir}; port=${3:-9092}
mkdir -p "$state"
export FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
exec flower-superlink \
  --ssl-ca-certfile "$pki/ca.crt" --ssl-certfile "$pki/server.pem" --ssl-keyfile "$pki/server.key" \
  --enable-supernode-auth --database "$state/state.db" \
  --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$port"
