#!/usr/bin/env bash
# End-to-end tests against the local cluster: brings it up when it is not (hack/cluster/up.sh), runs
# test/e2e, and when it brought the cluster up itself (or PVPOOL_E2E_TEARDOWN=1) tears it down through
# TestTeardown, which verifies nothing is left behind. PVPOOL_E2E_TEARDOWN=0 keeps the cluster.
# Extra arguments go to `go test` (e.g. -run TestNodeReady).
set -euo pipefail

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster/lib.sh"
cd "${REPO_ROOT}"

START=${SECONDS}
timings=()
cluster_up() {
  [[ -f "${ADMIN_KUBECONFIG}" ]] && pid_alive kube-apiserver && pid_alive kubelet &&
    kubectl_admin get --raw /readyz >/dev/null 2>&1
}

brought_up=0
if cluster_up; then
  log "reusing the running cluster (${STATE_DIR})"
  # Apply the current manifests and images; running processes are left alone.
  t=${SECONDS}
  hack/cluster/up.sh
  timings+=("$(printf '%5ss  make up (refresh)' "$((SECONDS - t))")")
else
  t=${SECONDS}
  if ! hack/cluster/up.sh; then
    # Leave nothing running behind a failed start.
    log "make up failed; tearing down what it started"
    hack/cluster/down.sh || true
    exit 1
  fi
  brought_up=1
  timings+=("$(printf '%5ss  make up' "$((SECONDS - t))")")
fi

export PVPOOL_E2E=1
export PVPOOL_CLUSTER_DIR="${STATE_DIR}"
export PVPOOL_E2E_KUBECONFIG="${ADMIN_KUBECONFIG}"
PVPOOL_E2E_KUBECTL="$(tool kubectl)"
export PVPOOL_E2E_KUBECTL
export PVPOOL_NODE_NAME="${NODE_NAME}"
# What TestTeardown checks is gone.
export PVPOOL_CGROUP_ROOT="${CGROUP_ROOT}" PVPOOL_BRIDGE="${BRIDGE_NAME}"
export PVPOOL_KUBE_APISERVER_PORT="${KUBE_APISERVER_PORT}" PVPOOL_ETCD_CLIENT_PORT="${ETCD_CLIENT_PORT}"
export PVPOOL_ETCD_PEER_PORT="${ETCD_PEER_PORT}" PVPOOL_CONTROLLER_MANAGER_PORT="${CONTROLLER_MANAGER_PORT}"
export PVPOOL_SCHEDULER_PORT="${SCHEDULER_PORT}" PVPOOL_KUBELET_PORT="${KUBELET_PORT}"
export PVPOOL_KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT}" PVPOOL_AGGREGATED_APISERVER_PORT="${AGGREGATED_APISERVER_PORT}"

status=0
t=${SECONDS}
# The packages run one after the other (-p 1): they share one small cluster.
go test -count=1 -v -p 1 -timeout 30m ./test/e2e/... ./test/csi/e2e/... -skip TestTeardown "$@" || status=$?
timings+=("$(printf '%5ss  e2e tests' "$((SECONDS - t))")")

teardown="${PVPOOL_E2E_TEARDOWN:-${brought_up}}"
if [[ "${teardown}" == 1 ]]; then
  t=${SECONDS}
  PVPOOL_E2E_TEARDOWN=1 go test -count=1 -v -timeout 10m ./test/e2e/... -run '^TestTeardown$' || status=$?
  timings+=("$(printf '%5ss  teardown (verified)' "$((SECONDS - t))")")
else
  log "leaving the cluster up (make down to remove it)"
fi

log "phase timings:"
printf '  %s\n' "${timings[@]}" >&2
log "e2e total $((SECONDS - START)) s, exit ${status}"
exit "${status}"
