# Shared settings and helpers of hack/cluster/*.sh and hack/images/build.sh (sourced, not run).
# Every setting can be overridden from the environment.

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
source "${REPO_ROOT}/hack/versions.env"

# All cluster state (certs, data, logs, PID files, containerd and kubelet roots) lives here.
STATE_DIR="${PVPOOL_CLUSTER_DIR:-${REPO_ROOT}/_output/cluster}"
PVPOOL_CACHE="${PVPOOL_CACHE:-${HOME}/.cache/pvpool}"

NODE_NAME="${PVPOOL_NODE_NAME:-pvpool-node}"
# The node's address lives on the CNI bridge the cluster creates, so the kubelet is reachable without
# touching the host's real interfaces (loopback is rejected as a node IP).
BRIDGE_NAME="${PVPOOL_BRIDGE:-pvpool0}"
POD_SUBNET="${PVPOOL_POD_SUBNET:-10.244.0.0/24}"
NODE_IP="${PVPOOL_NODE_IP:-10.244.0.1}"
# kubelet's cgroup root (cgroupfs driver, cgroup v1): pods live under <root>/kubepods in every hierarchy,
# so `make down` removes exactly this cluster's cgroups.
CGROUP_ROOT="${PVPOOL_CGROUP_ROOT:-/pvpool}"
SERVICE_CIDR="${PVPOOL_SERVICE_CIDR:-10.96.0.0/16}"
KUBERNETES_SERVICE_IP="${PVPOOL_KUBERNETES_SERVICE_IP:-10.96.0.1}"

ETCD_CLIENT_PORT="${PVPOOL_ETCD_CLIENT_PORT:-12379}"
ETCD_PEER_PORT="${PVPOOL_ETCD_PEER_PORT:-12380}"
KUBE_APISERVER_PORT="${PVPOOL_KUBE_APISERVER_PORT:-6443}"
CONTROLLER_MANAGER_PORT="${PVPOOL_CONTROLLER_MANAGER_PORT:-10257}"
SCHEDULER_PORT="${PVPOOL_SCHEDULER_PORT:-10259}"
KUBELET_PORT="${PVPOOL_KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${PVPOOL_KUBELET_HEALTHZ_PORT:-10248}"
AGGREGATED_APISERVER_PORT="${PVPOOL_AGGREGATED_APISERVER_PORT:-8443}"

PKI_DIR="${STATE_DIR}/pki"
PID_DIR="${STATE_DIR}/pids"
LOG_DIR="${STATE_DIR}/logs"
KUBECONFIG_DIR="${STATE_DIR}/kubeconfig"
ADMIN_KUBECONFIG="${KUBECONFIG_DIR}/admin.kubeconfig"
CONTAINERD_DIR="${STATE_DIR}/containerd"
CONTAINERD_SOCK="${CONTAINERD_DIR}/containerd.sock"
KUBELET_ROOT="${STATE_DIR}/kubelet"
CNI_DIR="${STATE_DIR}/cni"

PVPOOL_NAMESPACE="${PVPOOL_NAMESPACE:-pvpool-system}"
PVPOOL_APISERVER_SERVICE="pvpool-apiserver"

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# A cgroup root of "/" would make `make down` treat every container on the host as the cluster's.
if [[ ! "${CGROUP_ROOT}" =~ ^(/[A-Za-z0-9._-]+)+$ ]]; then
  die "PVPOOL_CGROUP_ROOT must be a dedicated cgroup path such as /pvpool, not '${CGROUP_ROOT}'"
fi

tool() { "${REPO_ROOT}/hack/tools/install.sh" --path "$1"; }

sidecar_version() {
  case "$1" in
  csi-provisioner) echo "${CSI_PROVISIONER_VERSION}" ;;
  csi-attacher) echo "${CSI_ATTACHER_VERSION}" ;;
  csi-resizer) echo "${CSI_RESIZER_VERSION}" ;;
  csi-snapshotter | snapshot-controller) echo "${EXTERNAL_SNAPSHOTTER_VERSION}" ;;
  *) return 1 ;;
  esac
}

ctr_k8s() { ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }

kubectl_admin() {
  "${PVPOOL_TOOLS_DIR:-${PVPOOL_CACHE}/tools}/kubectl-${KUBERNETES_VERSION}/kubectl" --kubeconfig "${ADMIN_KUBECONFIG}" "$@"
}

# pid_alive <name>: the process recorded in <name>.pid is still running. Every process the cluster
# starts names the state dir in its arguments, which guards against a recycled PID.
pid_alive() {
  local pidfile="${PID_DIR}/$1.pid"
  [[ -f "${pidfile}" ]] || return 1
  local pid
  pid="$(cat "${pidfile}")"
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null &&
    tr '\0' '\n' 2>/dev/null <"/proc/${pid}/cmdline" | grep -F -- "${STATE_DIR}/" >/dev/null
}

# stop_pid <name> [timeout]: SIGTERM the recorded process (SIGKILL after the timeout), forget it.
stop_pid() {
  local name="$1" timeout="${2:-20}"
  local pidfile="${PID_DIR}/${name}.pid"
  [[ -f "${pidfile}" ]] || return 0
  local pid
  pid="$(cat "${pidfile}")"
  if pid_alive "${name}"; then
    log "stopping ${name} (pid ${pid})"
    kill -TERM "${pid}" 2>/dev/null || true
    local i
    for ((i = 0; i < timeout * 10; i++)); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${pid}" 2>/dev/null; then
      log "  ${name} ignored SIGTERM for ${timeout}s; SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "${pidfile}"
}
