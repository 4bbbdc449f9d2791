# Manticore — see README.md.
SHELL := /bin/bash
NPM ?= npm
CONFIG ?= manifests/examples/embedded.yaml

.PHONY: run test build deps system-deps clean

## run: install what is missing, build, and run Manticore on the embedded default
run: system-deps deps build
	node dist/controller/cli/main.js up --config $(CONFIG)

## test: build and run the whole test suite (unit, contract, HAProxy integration, end to end)
test: system-deps deps build
	$(NPM) test

build: deps
	$(NPM) run build

deps: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci
	@touch $@

## system-deps: Debian packages Manticore needs (HAProxy); uses sudo when not root
system-deps:
	@bash hack/install-system-deps.sh

clean:
	rm -rf dist
