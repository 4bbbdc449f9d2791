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

node dist/controller/cli/main.js up --config "${CONFIG:-manifests/examples/cluster-dev.yaml}"
