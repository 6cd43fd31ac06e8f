#!/usr/bin/env bash
# Entrypoint of the anonfed coordinator container (also runs as a plain process outside Docker).
#
#   superlink        start the Flower SuperLink: TLS, SuperNode authentication, state database (default)
#   pki              create the consortium CA, SuperLink certificate and ledger key in PKI_DIR (once)
#   register-sites   register every enrolled site's SuperNode public key (ENROLLED_DIR/flower/*.pub)
#   run-app          run the federated DP-GAN app (deploy/flower/app); extra run-config as arguments
#   health           container health check: the SuperLink port accepts connections
#   anonfed ARGS...  any anonfed command
#
# Environment: PKI_DIR (default /pki), STATE_DIR (default /state), SUPERLINK_HOST (default
# 127.0.0.1), SUPERLINK_PORT (default 9092), PKI_HOSTS (names for the certificate, space-separated),
# ENROLLED_DIR (default /enrolled), APP_DIR (default /opt/anonfed-app), PUBLIC_DIR (pki: also copy
# ca.crt there for the sites). ANONFED_DRY_RUN=1 prints the command instead of running it.
#
# SECURITY: open-source Flower's Control API (submit runs, register nodes) has NO authentication and
# shares the SuperLink's port with the Fleet API. Keep SUPERLINK_HOST=127.0.0.1, or bind it only on a
# network that nothing but the fleet proxy can reach (compose.yaml: network "coordinator-internal"),
# and expose to sites only the proxy, which forwards /v1/fleet/* and nothing else.
set -euo pipefail

PKI=${PKI_DIR:-/pki}
STATE=${STATE_DIR:-/state}
HOST=${SUPERLINK_HOST:-127.0.0.1}
PORT=${SUPERLINK_PORT:-9092}
export FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
export FLWR_HOME=${FLWR_HOME:-$STATE/flwr}

die() { echo "anonfed-coordinator: $*" >&2; exit "${2:-64}"; }

run() {
  if [ "${ANONFED_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"; echo
  else
    exec "$@"
  fi
}

need_pki() {
  for f in ca.crt server.pem server.key; do
    [ -f "$PKI/$f" ] || die "$PKI/$f not found: run the 'pki' command once (or mount the consortium PKI at $PKI)" 3
  done
}

connection() {
  # The flwr CLI talks to the SuperLink from inside this container only.
  mkdir -p "$FLWR_HOME"
  cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "anonfed"

[superlink.anonfed]
address = "127.0.0.1:$PORT"
root-certificates = "$PKI/ca.crt"
TOML
}

cmd=${1:-superlink}
[ $# -gt 0 ] && shift
case "$cmd" in
  superlink)
    need_pki
    [ "$HOST" = 127.0.0.1 ] || echo "anonfed-coordinator: WARNING: SuperLink bound to $HOST; its Control API has no authentication, so only the fleet proxy may reach this address" >&2
    mkdir -p "$STATE"
    run flower-superlink --ssl-ca-certfile "$PKI/ca.crt" --ssl-certfile "$PKI/server.pem" --ssl-keyfile "$PKI/server.key" \
      --enable-supernode-auth --database "$STATE/state.db" --disable-runtime-dependency-installation \
      --host "$HOST" --port "$PORT"
    ;;
  pki)
    args=()
    for h in ${PKI_HOSTS:-127.0.0.1 localhost}; do args+=(--host "$h"); done
    if [ -n "${PUBLIC_DIR:-}" ]; then
      # Sites need only the CA certificate: copy it where they can mount it, never the keys.
      [ "${ANONFED_DRY_RUN:-0}" = 1 ] || anonfed coordinator pki --out "$PKI" "${args[@]}"
      run cp "$PKI/ca.crt" "$PUBLIC_DIR/ca.crt"
    else
      run anonfed coordinator pki --out "$PKI" "${args[@]}"
    fi
    ;;
  register-sites)
    need_pki
    connection
    enrolled=${ENROLLED_DIR:-/enrolled}
    shopt -s nullglob
    pubs=("$enrolled"/flower/*.pub)
    [ ${#pubs[@]} -gt 0 ] || die "no site public keys in $enrolled/flower/ (each site runs 'enroll' and sends its .pub)" 3
    for pub in "${pubs[@]}"; do
      site=$(basename "$pub" .pub)
      if [ "${ANONFED_DRY_RUN:-0}" = 1 ]; then
        printf '%q ' flwr supernode register "$pub" anonfed --name "$site"; echo
      else
        flwr supernode register "$pub" anonfed --name "$site"
      fi
    done
    ;;
  run-app)
    need_pki
    connection
    app=${APP_DIR:-/opt/anonfed-app}
    keys=${KEYS_DIR:-$PKI/keys}
    run flwr run "$app" anonfed --stream \
      --run-config "output-dir=\"$STATE/output\" keys-dir=\"$keys\" $*"
    ;;
  health)
    run python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5).close()" "$PORT"
    ;;
  anonfed)
    run anonfed "$@"
    ;;
  -h|--help|help)
    sed -n '2,20p' "$0"
    ;;
  *)
    die "unknown command '$cmd'; try: superlink, pki, register-sites, run-app, health, anonfed ARGS (see --help)"
    ;;
esac
