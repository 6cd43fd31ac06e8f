#!/usr/bin/env bash
# Site: start this site's SuperNode. The ClientApp it runs is the one in the anonfed package
# installed HERE (policy, budget and egress guard included); it finds the site through site-config.
# Usage: start-supernode.sh SITE_YAML CA_CERT SUPERLINK_HOST:PORT [LOCAL_PORT]
set -euo pipefail
cfg=$(realpath "${1:?site yaml}"); ca=${2:?ca cert}; link=${3:?host:port}; port=${4:-9094}
state=$(anonfed check-config "$cfg" | awk '/^state_dir:/ {print $2}')
export FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
exec flower-supernode \
  --root-certificates "$ca" --superlink "$link" \
  --auth-supernode-private-key "$state/keys/flower-node.key" \
  --port "$port" --node-config "site-config=\"$cfg\""
