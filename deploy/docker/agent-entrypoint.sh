#!/usr/bin/env bash
# Entrypoint of the anonfed agent container (also runs as a plain process outside Docker).
#
#   supernode        start this site's Flower SuperNode (the default); needs SUPERLINK and CA_CERT
#   enroll           create the site's keys (once) and export the PUBLIC halves to ENROLL_EXPORT
#   sync             retrieve new instances from the site's PACS sources, then ingest them
#   sync-loop        `sync` every PACS_SYNC_INTERVAL seconds (default 3600); failures are retried
#   ingest           `anonfed ingest` on the site config
#   status           `anonfed agent status` (catalog, budget used/left, last round, PACS)
#   health           container health check: config valid, state writable, accountant readable
#   anonfed ARGS...  any anonfed command
#
# Environment: ANONFED_CONFIG (default /config/site.yaml), SUPERLINK (host:port of the consortium's
# Fleet endpoint), CA_CERT (default /config/ca.crt), SUPERNODE_PORT (default 9094),
# ENROLL_EXPORT (default /state/export), PACS_SYNC_INTERVAL. ANONFED_DRY_RUN=1 prints the command
# that would run instead of running it. PACS passwords come from the variables the site config names
# (password_env); they are never passed on a command line.
set -euo pipefail

CONFIG=${ANONFED_CONFIG:-/config/site.yaml}
export FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}

die() { echo "anonfed-agent: $*" >&2; exit "${2:-64}"; }

run() {
  if [ "${ANONFED_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"; echo
  else
    exec "$@"
  fi
}

need_config() {
  [ -f "$CONFIG" ] || die "site config $CONFIG not found; mount it (read-only) at /config/site.yaml or set ANONFED_CONFIG" 3
}

state_dir() {
  # The resolved state_dir, from the validated config (fails with the config error's exit code).
  local out
  out=$(anonfed -q check-config "$CONFIG") || exit $?
  awk '/^state_dir:/ {print $2; exit}' <<<"$out"
}

cmd=${1:-supernode}
[ $# -gt 0 ] && shift
case "$cmd" in
  supernode)
    need_config
    : "${SUPERLINK:?set SUPERLINK to the consortium Fleet endpoint, host:port}"
    ca=${CA_CERT:-/config/ca.crt}
    [ -f "$ca" ] || die "CA certificate $ca not found; mount the consortium's ca.crt or set CA_CERT" 3
    state=$(state_dir)
    key="$state/keys/flower-node.key"
    [ -f "$key" ] || die "no SuperNode key at $key: run the 'enroll' command once and send the exported public key to the coordinator" 3
    run flower-supernode --root-certificates "$ca" --superlink "$SUPERLINK" \
      --auth-supernode-private-key "$key" --port "${SUPERNODE_PORT:-9094}" \
      --node-config "site-config=\"$CONFIG\""
    ;;
  enroll)
    need_config
    run anonfed enroll --config "$CONFIG" --export "${ENROLL_EXPORT:-/state/export}"
    ;;
  sync)
    need_config
    run anonfed pacs sync --config "$CONFIG" "$@"
    ;;
  sync-loop)
    need_config
    interval=${PACS_SYNC_INTERVAL:-3600}
    if ! [[ "$interval" =~ ^[0-9]+$ ]] || [ "$interval" -lt 10 ]; then
      die "PACS_SYNC_INTERVAL must be an integer >= 10 seconds, got '$interval'"
    fi
    if [ "${ANONFED_DRY_RUN:-0}" = 1 ]; then
      run anonfed pacs sync --config "$CONFIG"
      exit 0
    fi
    while true; do
      # A failed sync (PACS down, wrong password) is logged by anonfed and retried next time;
      # a config error is not going to fix itself, so it stops the loop.
      rc=0; anonfed pacs sync --config "$CONFIG" || rc=$?
      [ "$rc" -eq 3 ] && die "site config is invalid; fix it and restart" 3
      sleep "$interval"
    done
    ;;
  ingest)
    need_config
    run anonfed ingest --config "$CONFIG"
    ;;
  status)
    need_config
    run anonfed agent status --config "$CONFIG" "$@"
    ;;
  health)
    need_config
    run anonfed -q agent status --config "$CONFIG" --no-pacs --check
    ;;
  anonfed)
    run anonfed "$@"
    ;;
  -h|--help|help)
    sed -n '2,19p' "$0"
    ;;
  *)
    die "unknown command '$cmd'; try: supernode, enroll, sync, sync-loop, ingest, status, health, anonfed ARGS (see --help)"
    ;;
esac
