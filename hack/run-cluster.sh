#!/usr/bin/env bash
# `make run-cluster`: Manticore (controller, front end, router + HAProxy) against Consul and Nomad.
# CONSUL_HTTP_ADDR / NOMAD_ADDR name real agents; when neither is set, the API doubles are started here
# (as `make dev-cluster` does) and stopped again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

doubles_pid=""
cleanup() {
  if [ -n "$doubles_pid" ]; then kill "$doubles_pid" 2>/dev/null || true; wait "$doubles_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

if [ -z "${CONSUL_HTTP_ADDR:-}" ] && [ -z "${NOMAD_ADDR:-}" ]; then
  node dist/test/fakes/dev-cluster.js &
  doubles_pid=$!
  for _ in $(seq 1 100); do
    if node -e "require('http').get('http://127.0.0.1:${CONSUL_PORT:-8500}/v1/status/leader', r => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1))" 2>/dev/null &&
       node -e "require('http').get('http://127.0.0.1:${NOMAD_PORT:-4646}/v1/status/leader', r => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1))" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  export CONSUL_HTTP_ADDR="http://127.0.0.1:${CONSUL_PORT:-8500}" NOMAD_ADDR="http://127.0.0.1:${NOMAD_PORT:-4646}"
elif [ -z "${CONSUL_HTTP_ADDR:-}" ] || [ -z "${NOMAD_ADDR:-}" ]; then
  echo "run-cluster: set both CONSUL_HTTP_ADDR and NOMAD_ADDR, or neither (to use the local doubles)" >&2
  exit 2
fi

config="${CONFIG:-manifests/examples/cluster-dev.yaml}"
replicas="${REPLICAS:-1}"
if [ "$replicas" -le 1 ]; then
  node dist/controller/cli/main.js up --config "$config"
  exit
fi

# REPLICAS=N: N controllers (one leads), two front ends (:4000, :4001) and two routers, each with its own
# HAProxy on its own loopback address (127.0.0.1 and 127.0.0.2, the same ports, as two edge hosts would
# have), all as separate processes. Ctrl-C stops them all.
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  cleanup
}
trap stop_all EXIT
trap 'exit 130' INT TERM
for i in $(seq 1 "$replicas"); do
  node dist/controller/cli/main.js controller --config "$config" &
  pids+=($!)
done
for i in 1 2; do
  MANTICORE_FRONTEND_PORT=$((3999 + i)) node dist/controller/cli/main.js frontend --config "$config" &
  pids+=($!)
  MANTICORE_ROUTER_NAME="edge-$i" MANTICORE_ROUTER_RUN_DIR=".manticore/cluster-haproxy-$i" \
    MANTICORE_HTTP_HOST="127.0.0.$i" MANTICORE_TCP_HOST="127.0.0.$i" \
    node dist/controller/cli/main.js router --config "$config" &
  pids+=($!)
done
echo "run-cluster: $replicas controllers, front ends on 127.0.0.1:4000 and :4001, routers edge-1 (127.0.0.1) and edge-2 (127.0.0.2)"
wait -n "${pids[@]}"
