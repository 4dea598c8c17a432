# The two commands a user needs: `make up` (local cluster running pvpool) and `make test`.
SHELL := /usr/bin/env bash

.PHONY: all build up down test test-unit test-integration test-e2e codegen verify-codegen csi-sanity bench

all: build

build:
	hack/build.sh

up:
	hack/cluster/up.sh

down:
	hack/cluster/down.sh

test:
	hack/test.sh

test-unit:
	go test ./pkg/... ./cmd/...

test-integration:
	go test ./test/integration/...

test-e2e:
	hack/e2e.sh

codegen:
	hack/update-codegen.sh

verify-codegen:
	hack/verify-codegen.sh

csi-sanity:
	hack/csi-sanity.sh

bench:
	hack/bench $(BENCH_ARGS)
