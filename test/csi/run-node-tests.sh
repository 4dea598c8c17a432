#!/usr/bin/env bash
# Runs the CSI plugin's tests, including the root tests that start qemu-storage-daemon, nbdfuse and
# loop devices (they skip with a message when not root or without /dev/fuse and /dev/loop-control).
#   test/csi/run-node-tests.sh [go test flags...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
echo "[csi-tests] installing node dependencies" >&2
"${ROOT}/hack/install-node-deps.sh"
echo "[csi-tests] go test ./pkg/volume/... ./pkg/csi/... ./cmd/csi/... ./test/csi/..." >&2
cd "${ROOT}"
go test -count=1 "$@" ./pkg/volume/... ./pkg/csi/... ./cmd/csi/... ./test/csi/...
