# Manticore — see README.md.
SHELL := /bin/bash
NPM ?= npm
CONFIG ?= manifests/examples/embedded.yaml

.PHONY: run test build docs deps system-deps system-deps-bench system-deps-test clean dev-cluster run-cluster test-real real-agents chaos bench

## run: install what is missing, build, and run Manticore on the embedded default
run: system-deps deps build
	node dist/controller/cli/main.js up --config $(CONFIG)

## test: build and run the whole test suite (unit, contract, HAProxy integration, end to end)
test: system-deps-test deps build
	$(NPM) test

## chaos: controller replicas killed and stopped, Consul unavailable, cutting watches and losing its state, a router
## and its HAProxy killed, all under load, with the invariants checked (CHAOS_SESSIONS, default 200;
## CHAOS_OUTAGE_SECONDS, default 30)
chaos: deps build
	CHAOS_SESSIONS=$${CHAOS_SESSIONS:-200} CHAOS_OUTAGE_SECONDS=$${CHAOS_OUTAGE_SECONDS:-30} npx mocha --no-config --timeout 600000 --reporter dist/test/support/summary-reporter.js 'dist/test/chaos/**/*.test.js'

## bench: the benchmarks (docs/benchmarks.md): figures and ratios on standard output, bench/results.json;
## SCENARIOS picks some (default all), BENCH_QUICK=1 runs a short pass at small sizes
bench: system-deps-bench deps build
	node dist/hack/bench/main.js $(SCENARIOS)

## dev-cluster: the Consul and Nomad API doubles in the foreground (127.0.0.1:8500 and :4646;
## CONSUL_PORT / NOMAD_PORT override). Test infrastructure for trying the cluster backends here.
dev-cluster: system-deps deps build
	node dist/test/fakes/dev-cluster.js

## run-cluster: Manticore against CONSUL_HTTP_ADDR / NOMAD_ADDR, or the local doubles when neither is set
run-cluster: system-deps deps build
	bash hack/run-cluster.sh

## test-real: the store and scheduler contract suites against real agents (CONSUL_HTTP_ADDR and NOMAD_ADDR)
test-real: real-agents deps build
	npx mocha --no-config --timeout 60000 --reporter dist/test/support/summary-reporter.js \
	  dist/test/contract/consul-store.test.js dist/test/integration/nomad-scheduler.test.js

# Checked before anything is installed or built: without the agents there is nothing to run.
real-agents:
	@if [ -z "$$CONSUL_HTTP_ADDR" ] || [ -z "$$NOMAD_ADDR" ]; then \
	  echo "test-real: set CONSUL_HTTP_ADDR and NOMAD_ADDR to a Consul and a Nomad agent (e.g. 'consul agent -dev', 'nomad agent -dev')" >&2; exit 2; fi

build: deps
	$(NPM) run build

## docs: regenerate docs/configuration.md from the configuration schema (a test fails while it is stale)
docs: build
	node dist/controller/cli/main.js config-reference > docs/configuration.md

deps: node_modules/.package-lock.json

# npm only warns about package.json's engines, and an older Node.js (Debian 12 has 18) fails later, obscurely.
# Where better-sqlite3's prebuilt binary cannot be fetched (GitHub), node-gyp builds it from source and downloads
# Node's headers from nodejs.org for it, unless npm names a nodedir: Node.js from NodeSource or nodejs.org has them
# beside its binary, matching it exactly, so a machine that reaches only npm and Debian builds it too.
node_modules/.package-lock.json: package.json package-lock.json
	@node -e 'const [major, minor] = process.versions.node.split(".").map(Number); process.exit(major > 20 || (major === 20 && minor >= 19) ? 0 : 1)' \
	  || { echo "Manticore needs Node.js 20.19 or later with npm; this is $$(node --version 2>/dev/null || echo 'no Node.js')" >&2; exit 1; }
	@prefix="$$(node -p 'require("path").resolve(process.execPath, "../..")')"; \
	  if [ "$$($(NPM) config get nodedir)" = undefined ] && [ -e "$$prefix/include/node/node.h" ]; then \
	    export npm_config_nodedir="$$prefix"; echo "building native modules with the Node.js headers in $$prefix/include/node"; fi; \
	  echo "$(NPM) ci"; $(NPM) ci
	@touch $@

## system-deps: Debian packages Manticore needs to run (HAProxy, a toolchain for the SQLite binding, openssl);
## system-deps-bench adds wrk, system-deps-test also Chromium and a font; sudo when not root
system-deps:
	@bash hack/install-system-deps.sh run

system-deps-bench:
	@bash hack/install-system-deps.sh bench

system-deps-test:
	@bash hack/install-system-deps.sh test

clean:
	rm -rf dist
