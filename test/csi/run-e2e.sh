#!/usr/bin/env bash
# Runs the Subprovisioner seed's scenarios (test/csi/e2e) against pvpool-csi on the running local cluster
# (make up). Extra arguments go to `go test` (e.g. -run TestClone).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/hack/cluster/lib.sh"
cd "${REPO_ROOT}"
if [[ ! -f "${ADMIN_KUBECONFIG}" ]]; then
  echo "no local cluster at ${STATE_DIR} (run make up first)" >&2
  exit 1
fi
export PVPOOL_E2E=1
export PVPOOL_CLUSTER_DIR="${STATE_DIR}"
export PVPOOL_E2E_KUBECONFIG="${ADMIN_KUBECONFIG}"
export PVPOOL_NODE_NAME="${NODE_NAME}"
echo "[csi-e2e] go test ./test/csi/e2e against ${STATE_DIR}" >&2
go test -count=1 -v -timeout 30m ./test/csi/e2e/... "$@"
