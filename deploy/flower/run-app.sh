#!/usr/bin/env bash
# Coordinator: run the federated DP-GAN app (the bundle in deploy/flower/app holds config only).
# Usage: FLWR_HOME=... run-app.sh OUTPUT_DIR KEYS_DIR [extra run-config, e.g. "num-rounds=5"]
set -euo pipefail
here=$(dirname "$(realpath "$0")")
flwr run "$here/app" anonfed --stream \
  --run-config "output-dir=\"$(realpath -m "${1:?output dir}")\" keys-dir=\"$(realpath "${2:?keys dir}")\" ${3:-}"
